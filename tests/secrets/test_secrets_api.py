"""/api/secrets: admins write, members list, nobody reads a value back; values are stored only
encrypted and bound to their row; audit rows name the secret, never its value; saving a
workflow that reads an unknown secret is allowed with a warning."""

from __future__ import annotations

import httpx
from sqlalchemy import text

from taskloom.crypto import CredentialCipher, CredentialKeyError
from taskloom.runtime import Runtime
from taskloom.secrets.service import bound_to
from tests.factories import add_member, register

VALUE = "ghp_api-test-value-7d1c0e"


async def test_an_admin_creates_a_secret_whose_value_never_comes_back(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="secrets-owner", organization_name="Secrets Org")
    created = await client.post(
        "/api/secrets",
        json={
            "name": "GITHUB_TOKEN",
            "value": VALUE,
            "description": "the bot's token",
            "allowed_hosts": ["API.GitHub.com.", "127.0.0.1"],
        },
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/secrets/GITHUB_TOKEN"
    body = created.json()
    assert body["name"] == "GITHUB_TOKEN"
    assert body["allowed_hosts"] == ["api.github.com", "127.0.0.1"]
    assert "value" not in body
    member = await add_member(client, owner, role="member")
    listed = await client.get("/api/secrets", headers=member.headers)
    one = await client.get("/api/secrets/GITHUB_TOKEN", headers=member.headers)
    for response in (created, listed, one):
        assert response.status_code in (200, 201)
        assert VALUE not in response.text
    assert [s["name"] for s in listed.json()] == ["GITHUB_TOKEN"]
    assert one.json()["description"] == "the bot's token"

    # Stored encrypted, bound to its own row: it decrypts there and nowhere else.
    async with runtime.database.system_engine.connect() as conn:
        row = (
            await conn.execute(
                text("select id, org_id, key_id, encrypted_value from org_secrets where name = :n"),
                {"n": "GITHUB_TOKEN"},
            )
        ).one()
        audit = (
            await conn.execute(
                text(
                    "select action, details::text from audit_logs where org_id = :o "
                    "and resource_type = 'secret' order by created_at"
                ),
                {"o": row.org_id},
            )
        ).all()
    assert VALUE.encode() not in bytes(row.encrypted_value)
    cipher: CredentialCipher = runtime.cipher
    sealed = bytes(row.encrypted_value)
    assert cipher.decrypt(row.key_id, sealed, bound_to=bound_to(row.id, row.org_id)) == {
        "value": VALUE
    }
    try:
        cipher.decrypt(row.key_id, sealed, bound_to=bound_to(row.id, owner.user_id))
    except CredentialKeyError:
        pass
    else:  # pragma: no cover - the assertion below explains
        raise AssertionError("a secret decrypted outside its own row")
    assert [a.action for a in audit] == ["secret.create"]
    assert "GITHUB_TOKEN" in audit[0].details
    assert VALUE not in audit[0].details


async def test_only_admins_write_members_list_and_viewers_see_nothing(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="secrets-roles", organization_name="Roles Org")
    admin = await add_member(client, owner, role="admin")
    member = await add_member(client, owner, role="member")
    viewer = await add_member(client, owner, role="viewer")
    body = {"name": "SLACK_TOKEN", "value": "xoxb-roles-value"}
    refused = await client.post("/api/secrets", json=body, headers=member.headers)
    assert refused.status_code == 403
    assert (await client.post("/api/secrets", json=body, headers=admin.headers)).status_code == 201
    replace = {"value": "xoxb-member-wants-this", "allowed_hosts": ["evil.example"]}
    for method, path, payload in (
        ("PUT", "/api/secrets/SLACK_TOKEN", replace),
        ("DELETE", "/api/secrets/SLACK_TOKEN", None),
    ):
        answer = await client.request(method, path, json=payload, headers=member.headers)
        assert answer.status_code == 403, answer.text
    assert (await client.get("/api/secrets", headers=viewer.headers)).status_code == 403
    assert (await client.get("/api/secrets", headers=member.headers)).status_code == 200
    # The member's attempts changed nothing.
    kept = (await client.get("/api/secrets/SLACK_TOKEN", headers=admin.headers)).json()
    assert kept["allowed_hosts"] == []


async def test_put_replaces_delete_removes_and_names_are_checked(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="secrets-crud", organization_name="Crud Org")
    created = await client.post(
        "/api/secrets",
        json={"name": "API_KEY_1", "value": "first-value", "allowed_hosts": ["a.example"]},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    again = await client.post(
        "/api/secrets", json={"name": "API_KEY_1", "value": "other-value"}, headers=owner.headers
    )
    assert again.status_code == 409
    replaced = await client.put(
        "/api/secrets/API_KEY_1",
        json={"value": "second-value", "allowed_hosts": ["b.example"]},
        headers=owner.headers,
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["allowed_hosts"] == ["b.example"]
    assert replaced.json()["description"] is None
    for bad in ("lower", "1STARTS_WITH_DIGIT", "HAS-DASH", "A" * 65, ""):
        answer = await client.post(
            "/api/secrets", json={"name": bad, "value": "some-value"}, headers=owner.headers
        )
        assert answer.status_code == 422, bad
    for hosts in (["https://a.example"], ["a.example:443"], ["*.example"], ["a.example/x"]):
        answer = await client.post(
            "/api/secrets",
            json={"name": "HOSTS", "value": "some-value", "allowed_hosts": hosts},
            headers=owner.headers,
        )
        assert answer.status_code == 422, hosts
    # A value that fails validation is not echoed in the error.
    short = await client.post(
        "/api/secrets", json={"name": "SHORT", "value": "abc"}, headers=owner.headers
    )
    assert short.status_code == 422
    assert '"abc"' not in short.text
    deleted = await client.delete("/api/secrets/API_KEY_1", headers=owner.headers)
    assert deleted.status_code == 204
    assert (await client.get("/api/secrets/API_KEY_1", headers=owner.headers)).status_code == 404
    assert (await client.delete("/api/secrets/API_KEY_1", headers=owner.headers)).status_code == 404
    audit = await client.get(
        "/api/audit-logs", params={"resource_type": "secret"}, headers=owner.headers
    )
    assert audit.status_code == 200, audit.text
    actions = {e["action"] for e in audit.json()["items"]}
    assert {"secret.create", "secret.replace", "secret.delete"} <= actions
    for value in ("first-value", "second-value"):
        assert value not in audit.text


async def test_saving_a_workflow_that_reads_an_unknown_secret_warns_and_misuse_is_refused(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="secrets-wf", organization_name="Workflow Secrets Org")
    await client.post(
        "/api/secrets", json={"name": "KNOWN", "value": "known-value"}, headers=owner.headers
    )
    steps = [
        {
            "id": "call",
            "type": "http",
            "args": {
                "url": "https://api.example.com/x",
                "headers": {"Authorization": "Bearer {{ secrets.KNOWN }}{{ secrets.MISSING }}"},
            },
        }
    ]
    saved = await client.post(
        "/api/workflows",
        json={"name": "w", "definition": {"steps": steps}},
        headers=owner.headers,
    )
    assert saved.status_code == 201, saved.text
    assert saved.json()["warnings"] == [
        {
            "code": "unknown_secrets",
            "message": "the definition reads secrets the organization does not have: MISSING",
            "names": ["MISSING"],
        }
    ]
    # The definition keeps the template, never a value.
    assert "{{ secrets.KNOWN }}" in str(saved.json()["definition"])
    fine = await client.put(
        f"/api/workflows/{saved.json()['id']}",
        json={
            "name": "w",
            "definition": {
                "steps": [
                    {"id": "t", "type": "transform", "args": {"value": "x{{ secrets.KNOWN }}"}}
                ]
            },
        },
        headers=owner.headers,
    )
    assert fine.status_code == 200, fine.text
    assert fine.json()["warnings"] == []
    # Uses that would hide a value from redaction (or test it) are refused at save time.
    for template in (
        "{{ secrets.KNOWN | reverse }}",
        "{{ secrets.KNOWN[0] }}",
        "{{ secrets['KNOWN'] }}",
        "{{ secrets }}",
        "{% if secrets.KNOWN == 'a' %}yes{% endif %}",
        "{% set x %}{{ secrets.KNOWN }}{% endset %}{{ x | upper }}",
        "{{ ('a' ~ secrets.KNOWN) | upper }}",
    ):
        refused = await client.post(
            "/api/workflows",
            json={
                "name": "bad",
                "definition": {
                    "steps": [{"id": "t", "type": "transform", "args": {"value": template}}]
                },
            },
            headers=owner.headers,
        )
        assert refused.status_code == 422, template
        assert "secret" in refused.json()["error"]["message"], template
