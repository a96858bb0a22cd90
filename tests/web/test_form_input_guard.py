"""Forms are checked for what PostgreSQL cannot store whatever their encoding (urlencoded or
multipart), and so are the fields the UI parses as JSON: a 422 naming the field, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.web.conftest import Browser
from tests.web.support import csrf_of


def _multipart(fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body (what a form with enctype="multipart/form-data" sends)."""
    boundary = "taskloom-guard-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    return (
        ("".join(parts) + f"--{boundary}--\r\n").encode(),
        f"multipart/form-data; boundary={boundary}",
    )


async def test_multipart_forms_are_checked_before_the_ui_reads_them(
    new_browser: Browser,
) -> None:
    browser = await new_browser()
    token = csrf_of(await browser.get("/ui/login"))
    body, content_type = _multipart(
        {"csrf_token": token, "email": "a\x00b@example.com", "password": "whatever"}
    )
    response = await browser.post("/ui/login", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_characters"
    assert response.json()["error"]["message"].startswith("form.email")


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        ('{"steps": [{"id": "t", "type": "transform", "args": {"value": NaN}}]}', "NaN"),
        ('{"steps": [{"id": "t", "type": "transform", "args": {"v": "a\\u0000"}}]}', "NUL"),
    ],
)
async def test_json_typed_into_a_form_field_is_checked_like_a_json_body(
    owner_browser: httpx.AsyncClient, definition: str, problem: str
) -> None:
    """The UI parses some fields as JSON (a workflow's definition, a run's input): NaN and an
    escaped NUL only appear once parsed, so the field is checked then, by the same rules."""
    for multipart in (False, True):
        token = csrf_of(await owner_browser.get("/ui/workflows/new"))
        fields = {"csrf_token": token, "name": f"guarded {problem}", "definition": definition}
        if multipart:
            body, content_type = _multipart(fields)
            response = await owner_browser.post(
                "/ui/workflows/new", content=body, headers={"Content-Type": content_type}
            )
        else:
            response = await owner_browser.post("/ui/workflows/new", data=fields)
        assert response.status_code == 422, response.text
        assert "definition.steps.0.args" in response.text
