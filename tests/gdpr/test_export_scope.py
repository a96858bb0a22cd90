"""A data export holds the person's own data (account, memberships, the audit events they
caused, the executions they started with inputs and outputs), and what they wrote in an
organization only while they may still read it there: otherwise a reference (id, type,
created_at), never the definition, configuration or URL."""

from __future__ import annotations

import io
import json
import secrets
import uuid
import zipfile
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import insert, text

from taskloom.gdpr.inventory import unclassified
from taskloom.models import metadata
from taskloom.runtime import Runtime
from tests.factories import Account, add_member, login, make_superuser, register


@dataclass
class Author:
    """An admin of `owner`'s organization who wrote a workflow, a connection and a webhook
    there and ran the workflow; `marks` are strings only those resources contain."""

    account: Account
    owner: Account
    workflow_id: str
    execution_id: str
    connection_id: uuid.UUID
    webhook_id: uuid.UUID
    execution_input: str
    marks: dict[str, str]


def _definition(mark: str) -> dict[str, Any]:
    return {"steps": [{"id": "t", "type": "transform", "args": {"value": mark}}]}


async def _author(client: httpx.AsyncClient, runtime: Runtime) -> Author:
    owner = await register(client, label="org-owner", organization_name="Keeps Its Data")
    author = await add_member(client, owner, "admin", label="author")
    marks = {
        name: f"{name}-{secrets.token_hex(8)}"
        for name in ("definition", "config", "base_url", "webhook_url", "later_definition")
    }
    workflow = await client.post(
        "/api/workflows",
        json={"name": "author's workflow", "definition": _definition(marks["definition"])},
        headers=author.headers,
    )
    assert workflow.status_code == 201, workflow.text
    execution_input = f"my own input {secrets.token_hex(6)}"
    execution = await client.post(
        f"/api/workflows/{workflow.json()['id']}/execute",
        json={"input": {"note": execution_input}},
        headers=author.headers,
    )
    assert execution.status_code == 202, execution.text
    connection_id, webhook_id = uuid.uuid4(), uuid.uuid4()
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            insert(metadata.tables["tool_connections"]).values(
                id=connection_id,
                org_id=owner.org_id,
                provider="http",
                name=f"api-{secrets.token_hex(4)}",
                base_url=f"https://{marks['base_url']}.example.test",
                config={"project": marks["config"]},
                encrypted_credentials=b"\x01ciphertext",
                created_by=author.user_id,
            )
        )
        await conn.execute(
            insert(metadata.tables["webhook_endpoints"]).values(
                id=webhook_id,
                org_id=owner.org_id,
                url=f"https://hooks.example.test/{marks['webhook_url']}",
                events=["workflow.created"],
                encrypted_secret=b"\x01ciphertext",
                created_by=author.user_id,
            )
        )
    return Author(
        account=author,
        owner=owner,
        workflow_id=workflow.json()["id"],
        execution_id=execution.json()["execution_id"],
        connection_id=connection_id,
        webhook_id=webhook_id,
        execution_input=execution_input,
        marks=marks,
    )


async def _export(client: httpx.AsyncClient, person: Account) -> dict[str, Any]:
    response = await client.get("/api/user/data-export", headers=person.headers)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _ids(document: dict[str, Any], table: str) -> set[str]:
    return {row["id"] for row in document["tables"][table]}


def _references(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {reference["id"]: reference for reference in document["references"]}


def test_every_column_referencing_users_is_classified_personal_or_authored() -> None:
    """A new column referencing users must be classified (gdpr/inventory.py) before it ships;
    until then the export shows its rows as references only."""
    assert unclassified() == []


async def test_a_removed_member_exports_only_references_to_what_they_wrote_there(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    author = await _author(client, runtime)
    removed = await client.delete(
        f"/api/members/{author.account.user_id}", headers=author.owner.headers
    )
    assert removed.status_code == 204, removed.text
    # The organization changes the workflow after they left.
    updated = await client.put(
        f"/api/workflows/{author.workflow_id}",
        json={
            "name": "author's workflow",
            "definition": _definition(author.marks["later_definition"]),
        },
        headers=author.owner.headers,
    )
    assert updated.status_code == 200, updated.text

    document = await _export(client, await login(client, author.account.email))

    text = json.dumps(document)
    for name, mark in author.marks.items():
        assert mark not in text, f"the export shows the organization's {name}"
    references = _references(document)
    for table, resource_id in (
        ("workflows", author.workflow_id),
        ("tool_connections", str(author.connection_id)),
        ("webhook_endpoints", str(author.webhook_id)),
    ):
        assert resource_id not in _ids(document, table), table
        reference = references[resource_id]
        assert set(reference) == {"id", "type", "created_at"}
        assert reference["type"] == table
        assert reference["created_at"]
    # Still theirs: the account, their memberships, the events they caused and the execution
    # they started, with its input (the definition it ran is the organization's).
    assert [u["email"] for u in document["tables"]["users"]] == [author.account.email]
    assert {m["org_id"] for m in document["tables"]["memberships"]} == {
        str((await login(client, author.account.email)).org_id)
    }
    caused = document["tables"]["audit_logs"]
    assert {e["actor_user_id"] for e in caused} == {str(author.account.user_id)}
    assert any(
        e["action"] == "workflow.create" and e["org_id"] == str(author.owner.org_id) for e in caused
    )
    [execution] = [
        e for e in document["tables"]["workflow_executions"] if e["id"] == author.execution_id
    ]
    assert execution["input"] == {"note": author.execution_input}
    assert execution["definition"] == "[withheld]"
    assert document["withheld"]


async def test_a_current_member_still_exports_what_they_wrote_whole(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    author = await _author(client, runtime)

    document = await _export(client, author.account)

    assert document["references"] == []
    [workflow] = document["tables"]["workflows"]
    assert workflow["definition"] == _definition(author.marks["definition"])
    [version] = document["tables"]["workflow_versions"]  # the version they saved
    assert (version["number"], version["workflow_id"]) == (1, author.workflow_id)
    assert version["definition"] == _definition(author.marks["definition"])
    [connection] = document["tables"]["tool_connections"]
    assert connection["config"] == {"project": author.marks["config"]}
    assert connection["encrypted_credentials"] == "[redacted]"
    [webhook] = document["tables"]["webhook_endpoints"]
    assert author.marks["webhook_url"] in webhook["url"]
    [execution] = document["tables"]["workflow_executions"]
    assert execution["input"] == {"note": author.execution_input}
    assert execution["definition"] == _definition(author.marks["definition"])


async def test_a_demoted_admin_keeps_workflows_but_only_references_admin_only_resources(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    author = await _author(client, runtime)
    demoted = await client.patch(
        f"/api/members/{author.account.user_id}",
        json={"role": "viewer"},
        headers=author.owner.headers,
    )
    assert demoted.status_code == 200, demoted.text

    document = await _export(client, await login(client, author.account.email))

    assert _ids(document, "workflows") == {author.workflow_id}  # viewers read workflows
    assert document["tables"]["tool_connections"] == []
    assert document["tables"]["webhook_endpoints"] == []
    assert {r["type"] for r in document["references"]} == {
        "tool_connections",
        "webhook_endpoints",
    }
    text = json.dumps(document)
    for name in ("config", "base_url", "webhook_url"):
        assert author.marks[name] not in text, name


async def test_a_zip_export_lists_references_in_their_own_file(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    author = await _author(client, runtime)
    await client.delete(f"/api/members/{author.account.user_id}", headers=author.owner.headers)
    person = await login(client, author.account.email)
    response = await client.get(
        "/api/user/data-export", params={"format": "zip"}, headers=person.headers
    )
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    references = json.loads(archive.read("references.json"))
    manifest = json.loads(archive.read("manifest.json"))
    # The workflow, the version of it they saved, the connection and the webhook.
    assert manifest["reference_count"] == len(references) == 4
    assert sorted(r["type"] for r in references) == [
        "tool_connections",
        "webhook_endpoints",
        "workflow_versions",
        "workflows",
    ]
    assert json.loads(archive.read("tables/workflows.json")) == []
    assert "references.json" in archive.read("README.md").decode()
    for mark in author.marks.values():
        assert all(mark.encode() not in archive.read(name) for name in archive.namelist())


async def test_instance_flags_are_exported_whole_only_while_their_author_is_an_instance_admin(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    root = await make_superuser(client, runtime)
    someone = await register(client, label="flag-target", organization_name="Flag Target Org")
    flag_id, override_id = uuid.uuid4(), uuid.uuid4()
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            insert(metadata.tables["feature_flags"]).values(
                id=flag_id, key=f"scope-{secrets.token_hex(6)}", created_by=root.user_id
            )
        )
        await conn.execute(  # an instance-wide override (no organization) for someone else
            insert(metadata.tables["feature_flag_overrides"]).values(
                id=override_id,
                flag_id=flag_id,
                user_id=someone.user_id,
                enabled=True,
                created_by=root.user_id,
            )
        )

    document = await _export(client, root)
    assert _ids(document, "feature_flags") == {str(flag_id)}
    assert _ids(document, "feature_flag_overrides") == {str(override_id)}
    assert document["references"] == []

    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            text("update users set is_superuser = false where id = :u"), {"u": root.user_id}
        )
    document = await _export(client, root)
    assert document["tables"]["feature_flags"] == []
    assert document["tables"]["feature_flag_overrides"] == []
    assert set(_references(document)) == {str(flag_id), str(override_id)}
