"""The organization registration creates when none is named: built from the display name."""

from __future__ import annotations

import httpx

from tests.factories import PASSWORD, unique_email


async def test_the_longest_display_name_registers_with_a_default_organization_that_fits(
    client: httpx.AsyncClient,
) -> None:
    """200 characters are a valid display name; its default organization name must fit the
    200-character column too (it was a 500)."""
    registered = await client.post(
        "/auth/register",
        json={"email": unique_email("long"), "password": PASSWORD, "display_name": "x" * 200},
    )
    assert registered.status_code == 201, registered.text
    headers = {"Authorization": f"Bearer {registered.json()['access_token']}"}
    org = (await client.get("/api/org", headers=headers)).json()
    assert org["name"] == "x" * 188 + "'s workspace"
    assert len(org["name"]) == 200
