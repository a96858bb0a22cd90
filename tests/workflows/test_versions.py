"""Workflow versions: every create and `PUT` stores one (never a `PATCH`), numbered with the
workflow's version, with its author, time, message, definition and its triggers' and schedules'
snapshot; viewers read the history and diffs of its canonical YAML; members restore one as a new
version, triggers and schedules included; `PUT` honours `If-Match` with the `ETag` of `GET`;
executions record the version they ran; another organization's ids are not found."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from taskloom.runtime import Runtime
from tests.factories import Account, add_member, register
from tests.triggers.schedule_support import delete_all_schedules

STEP_A = {"id": "a", "type": "transform", "args": {"value": 1}}
STEP_B = {"id": "b", "type": "transform", "args": {"value": "{{ steps.a.output }}"}}
STEP_C = {"id": "c", "type": "transform", "args": {"value": 3}}
YEARLY = "0 0 1 1 *"  # never due while a test runs


@pytest.fixture(autouse=True)
async def _no_schedule_outlives_its_test(runtime: Runtime) -> AsyncIterator[None]:
    """The session's later worker processes would fire a schedule left behind."""
    yield
    await delete_all_schedules(runtime)


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    return await register(client, label="versions", organization_name="Versions Org")


def _body(name: str, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": name, "definition": {"steps": steps}, **extra}


async def _create(client: httpx.AsyncClient, account: Account, **extra: Any) -> str:
    created = await client.post(
        "/api/workflows", json=_body("wf", [STEP_A], **extra), headers=account.headers
    )
    assert created.status_code == 201, created.text
    assert created.headers["etag"] == '"1"'
    return str(created.json()["id"])


async def _put(
    client: httpx.AsyncClient,
    account: Account,
    workflow_id: str,
    body: dict[str, Any],
    **headers: str,
) -> httpx.Response:
    return await client.put(
        f"/api/workflows/{workflow_id}", json=body, headers={**account.headers, **headers}
    )


async def _versions(client: httpx.AsyncClient, account: Account, workflow_id: str) -> Any:
    listed = await client.get(f"/api/workflows/{workflow_id}/versions", headers=account.headers)
    assert listed.status_code == 200, listed.text
    return listed.json()


async def test_create_and_put_store_numbered_versions_with_author_and_message_but_patch_does_not(
    client: httpx.AsyncClient, owner: Account
) -> None:
    member = await add_member(client, owner, role="member")
    workflow_id = await _create(client, owner, message="first draft")
    updated = await _put(client, member, workflow_id, _body("wf2", [STEP_A, STEP_B]))
    assert updated.status_code == 200, updated.text
    assert updated.json()["version"] == 2
    disabled = await client.patch(
        f"/api/workflows/{workflow_id}", json={"enabled": False}, headers=owner.headers
    )
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["version"] == 2
    again = await _put(
        client, owner, workflow_id, _body("wf3", [STEP_C, STEP_A], message="reordered")
    )
    assert again.json()["version"] == 3

    page = await _versions(client, owner, workflow_id)
    assert [v["number"] for v in page["items"]] == [3, 2, 1]  # newest first, no PATCH version
    assert page["next_cursor"] is None
    by_number = {v["number"]: v for v in page["items"]}
    assert (by_number[1]["message"], by_number[1]["created_by"]) == (
        "first draft",
        str(owner.user_id),
    )
    assert (by_number[2]["message"], by_number[2]["created_by"]) == (None, str(member.user_id))
    assert (by_number[3]["message"], by_number[3]["name"]) == ("reordered", "wf3")
    assert by_number[3]["created_at"] >= by_number[2]["created_at"] >= by_number[1]["created_at"]

    second = await client.get(f"/api/workflows/{workflow_id}/versions/2", headers=owner.headers)
    assert second.status_code == 200, second.text
    assert second.json()["definition"] == {"steps": [STEP_A, STEP_B]}
    assert (second.json()["name"], second.json()["workflow_id"]) == ("wf2", workflow_id)
    assert (second.json()["triggers"], second.json()["schedules"]) == ([], [])
    missing = await client.get(f"/api/workflows/{workflow_id}/versions/4", headers=owner.headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "version_not_found"


async def test_the_history_is_paginated_newest_first(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _create(client, owner)
    for n in range(2, 6):
        assert (await _put(client, owner, workflow_id, _body(f"v{n}", [STEP_A]))).status_code == 200
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await client.get(
            f"/api/workflows/{workflow_id}/versions", params=params, headers=owner.headers
        )
        assert page.status_code == 200, page.text
        seen += [v["number"] for v in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1]
    bad = await client.get(
        f"/api/workflows/{workflow_id}/versions",
        params={"cursor": "not-a-cursor"},
        headers=owner.headers,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_cursor"


async def test_get_sends_the_version_as_etag_and_put_honours_if_match(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _create(client, owner)
    read = await client.get(f"/api/workflows/{workflow_id}", headers=owner.headers)
    etag = read.headers["etag"]
    assert etag == '"1"'

    first = await _put(client, owner, workflow_id, _body("mine", [STEP_A]), **{"If-Match": etag})
    assert first.status_code == 200, first.text
    assert first.headers["etag"] == '"2"'
    # A second editor who read version 1 too: refused, and nothing of theirs is saved.
    stale = await _put(client, owner, workflow_id, _body("theirs", [STEP_B]), **{"If-Match": etag})
    assert stale.status_code == 412, stale.text
    error = stale.json()["error"]
    assert error["code"] == "version_mismatch"
    assert error["details"] == {"current_version": 2}
    assert '"2"' in error["message"]
    assert error["request_id"]
    for tag in ('W/"2"', "2", "garbage"):  # weak or malformed tags never match
        refused = await _put(client, owner, workflow_id, _body("x", [STEP_A]), **{"If-Match": tag})
        assert refused.status_code == 412, tag
    current = await client.get(f"/api/workflows/{workflow_id}", headers=owner.headers)
    assert (current.json()["name"], current.headers["etag"]) == ("mine", '"2"')
    assert [v["number"] for v in (await _versions(client, owner, workflow_id))["items"]] == [2, 1]

    listed = await _put(
        client, owner, workflow_id, _body("listed", [STEP_A]), **{"If-Match": '"7", "2"'}
    )
    assert listed.status_code == 200, listed.text
    anything = await _put(client, owner, workflow_id, _body("any", [STEP_A]), **{"If-Match": "*"})
    assert anything.status_code == 200, anything.text
    without = await _put(client, owner, workflow_id, _body("plain", [STEP_A]))
    assert (without.status_code, without.json()["version"]) == (200, 5)


async def test_the_diff_is_a_unified_diff_of_the_canonical_yaml(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _create(client, owner)
    await _put(client, owner, workflow_id, _body("wf", [STEP_A, STEP_B]))
    # The same definition, its keys written in another order: the same canonical YAML.
    shuffled = [
        {"args": {"value": 1}, "type": "transform", "id": "a"},
        dict(reversed(STEP_B.items())),
    ]
    await _put(client, owner, workflow_id, _body("wf", shuffled))

    diff = await client.get(
        f"/api/workflows/{workflow_id}/versions/2/diff",
        params={"against": 1},
        headers=owner.headers,
    )
    assert diff.status_code == 200, diff.text
    answer = diff.json()
    assert (answer["from_version"], answer["to_version"]) == (1, 2)
    lines = answer["diff"].splitlines()
    assert lines[:2] == ["--- version 1", "+++ version 2"]
    added = [line for line in lines if line.startswith("+") and not line.startswith("+++")]
    assert "+  - args:" in added
    assert "+      value: '{{ steps.a.output }}'" in added
    assert "+    id: b" in added
    assert not [line for line in lines if line.startswith("-") and not line.startswith("---")]

    same = await client.get(f"/api/workflows/{workflow_id}/versions/3/diff", headers=owner.headers)
    assert (same.json()["from_version"], same.json()["diff"]) == (2, "")  # default: the one before
    backwards = await client.get(
        f"/api/workflows/{workflow_id}/versions/1/diff",
        params={"against": 3},
        headers=owner.headers,
    )
    removed = [ln for ln in backwards.json()["diff"].splitlines() if ln.startswith("-  ")]
    assert "-    id: b" in removed
    first = await client.get(f"/api/workflows/{workflow_id}/versions/1/diff", headers=owner.headers)
    assert first.json()["from_version"] is None
    assert "+name: wf" in first.json()["diff"].splitlines()
    unknown = await client.get(
        f"/api/workflows/{workflow_id}/versions/1/diff",
        params={"against": 9},
        headers=owner.headers,
    )
    assert unknown.status_code == 404


async def test_versions_have_no_route_that_changes_them(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _create(client, owner)
    path = f"/api/workflows/{workflow_id}/versions/1"
    for method in ("PUT", "PATCH", "DELETE"):
        answer = await client.request(method, path, json={}, headers=owner.headers)
        assert answer.status_code == 405, (method, answer.text)
    assert (await client.get(path, headers=owner.headers)).json()["definition"] == {
        "steps": [STEP_A]
    }


async def test_restore_brings_back_the_definition_triggers_and_schedules(
    client: httpx.AsyncClient, owner: Account
) -> None:
    watched = await _create(client, owner)
    workflow_id = await _create(client, owner)
    base = f"/api/workflows/{workflow_id}"
    schedule = await client.post(
        f"{base}/schedules",
        json={"cron": YEARLY, "timezone": "Europe/Berlin", "input": {"n": 1}, "overlap": "queue"},
        headers=owner.headers,
    )
    assert schedule.status_code == 201, schedule.text
    event = await client.post(
        f"{base}/triggers",
        json={"kind": "event", "on": {"workflow": watched, "status": ["failed"]}},
        headers=owner.headers,
    )
    assert event.status_code == 201, event.text
    hook = await client.post(
        f"{base}/triggers", json={"kind": "webhook", "verification": "token"}, headers=owner.headers
    )
    assert hook.status_code == 201, hook.text
    saved = await _put(client, owner, workflow_id, _body("kept", [STEP_A, STEP_B], message="ok"))
    assert saved.json()["version"] == 2
    kept = (await client.get(f"{base}/versions/2", headers=owner.headers)).json()
    assert [t["kind"] for t in kept["triggers"]] == ["event", "webhook"]
    assert kept["triggers"][0]["on"] == {"workflow": watched, "status": ["failed"]}
    assert "secret" not in str(kept["triggers"]).lower()  # a snapshot never holds one
    assert [(s["cron"], s["timezone"], s["input"], s["overlap"]) for s in kept["schedules"]] == [
        (YEARLY, "Europe/Berlin", {"n": 1}, "queue")
    ]

    # Then everything changes: the schedule is deleted and another added, the event trigger
    # changed, the webhook trigger deleted, the definition replaced.
    schedule_id = schedule.json()["id"]
    await client.delete(f"/api/schedules/{schedule_id}", headers=owner.headers)
    other = await client.post(
        f"{base}/schedules", json={"cron": "0 0 2 1 *"}, headers=owner.headers
    )
    await client.patch(
        f"/api/triggers/{event.json()['id']}",
        json={"on": {"status": ["succeeded"]}, "enabled": False},
        headers=owner.headers,
    )
    await client.delete(f"/api/triggers/{hook.json()['id']}", headers=owner.headers)
    await _put(client, owner, workflow_id, _body("changed", [STEP_A]))

    restored = await client.post(
        f"{base}/versions/2/restore", json={"message": "back to 2"}, headers=owner.headers
    )
    assert restored.status_code == 201, restored.text
    answer = restored.json()
    assert restored.headers["location"] == f"{base}/versions/4"
    assert restored.headers["etag"] == '"4"'
    version = answer["version"]
    assert (version["number"], version["restored_from"], version["message"]) == (4, 2, "back to 2")
    assert (version["name"], version["definition"]) == ("kept", kept["definition"])
    workflow = (await client.get(base, headers=owner.headers)).json()
    assert (workflow["version"], workflow["name"]) == (4, "kept")
    assert workflow["definition"] == {"steps": [STEP_A, STEP_B]}

    schedules = (await client.get(f"{base}/schedules", headers=owner.headers)).json()
    assert [(s["cron"], s["timezone"], s["input"], s["overlap"]) for s in schedules] == [
        (YEARLY, "Europe/Berlin", {"n": 1}, "queue")
    ]
    assert other.json()["id"] not in {s["id"] for s in schedules}
    triggers = (await client.get(f"{base}/triggers", headers=owner.headers)).json()
    by_kind = {t["kind"]: t for t in triggers}
    assert sorted(by_kind) == ["event", "webhook"]
    assert by_kind["event"]["id"] == event.json()["id"]  # still there: changed back in place
    assert (by_kind["event"]["on"]["status"], by_kind["event"]["enabled"]) == (["failed"], True)
    # The deleted webhook trigger is back, with a new id and a new secret shown this once.
    [secret] = answer["new_trigger_secrets"]
    assert secret["trigger_id"] == by_kind["webhook"]["id"] != hook.json()["id"]
    assert secret["url"] == f"/hooks/{secret['trigger_id']}"
    started = await client.post(
        secret["url"], json={"n": 1}, headers={"Authorization": f"Bearer {secret['secret']}"}
    )
    assert started.status_code == 202, started.text
    assert answer["skipped_triggers"] == []
    # The new version's snapshot is what the workflow has now.
    assert {t["id"] for t in version["triggers"]} == {t["id"] for t in triggers}
    assert {s["id"] for s in version["schedules"]} == {s["id"] for s in schedules}

    logs = await client.get(
        "/api/audit-logs", params={"action": "workflow.restore"}, headers=owner.headers
    )
    [entry] = [e for e in logs.json()["items"] if e["resource_id"] == workflow_id]
    assert entry["details"] == {"version": 4, "restored_from": 2}


async def test_a_member_may_restore_but_not_past_a_webhook_trigger_and_a_viewer_may_not(
    client: httpx.AsyncClient, owner: Account
) -> None:
    member = await add_member(client, owner, role="member")
    viewer = await add_member(client, owner, role="viewer")
    workflow_id = await _create(client, owner)
    base = f"/api/workflows/{workflow_id}"
    await _put(client, owner, workflow_id, _body("two", [STEP_A, STEP_B]))

    for path in (f"{base}/versions", f"{base}/versions/1", f"{base}/versions/2/diff"):
        assert (await client.get(path, headers=viewer.headers)).status_code == 200, path
    refused = await client.post(f"{base}/versions/1/restore", headers=viewer.headers)
    assert refused.status_code == 403
    by_member = await client.post(f"{base}/versions/1/restore", headers=member.headers)
    assert by_member.status_code == 201, by_member.text
    assert by_member.json()["version"]["message"] == "Restored version 1"
    assert by_member.json()["version"]["created_by"] == str(member.user_id)

    # Version 4 has a webhook trigger; restoring 3 would delete it: admins only, nothing changes.
    hook = await client.post(
        f"{base}/triggers", json={"kind": "webhook", "verification": "token"}, headers=owner.headers
    )
    assert hook.status_code == 201, hook.text
    await _put(client, owner, workflow_id, _body("four", [STEP_A]))
    blocked = await client.post(f"{base}/versions/3/restore", headers=member.headers)
    assert blocked.status_code == 403, blocked.text
    assert "webhook" in blocked.json()["error"]["message"]
    after = await client.get(base, headers=owner.headers)
    assert (after.json()["version"], after.json()["name"]) == (4, "four")
    assert len((await client.get(f"{base}/triggers", headers=owner.headers)).json()) == 1


async def test_restore_honours_if_match(client: httpx.AsyncClient, owner: Account) -> None:
    workflow_id = await _create(client, owner)
    await _put(client, owner, workflow_id, _body("two", [STEP_A]))
    path = f"/api/workflows/{workflow_id}/versions/1/restore"
    stale = await client.post(path, headers={**owner.headers, "If-Match": '"1"'})
    assert stale.status_code == 412
    fresh = await client.post(path, headers={**owner.headers, "If-Match": '"2"'})
    assert fresh.status_code == 201, fresh.text


async def test_every_version_route_answers_404_for_another_organizations_workflow(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _create(client, owner)
    stranger = await register(client, label="stranger", organization_name="Elsewhere")
    base = f"/api/workflows/{workflow_id}/versions"
    for method, path in (
        ("GET", base),
        ("GET", f"{base}/1"),
        ("GET", f"{base}/1/diff"),
        ("POST", f"{base}/1/restore"),
    ):
        answer = await client.request(method, path, headers=stranger.headers)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "not_found"
    assert [v["number"] for v in (await _versions(client, owner, workflow_id))["items"]] == [1]


async def test_executions_record_the_version_they_ran_from_every_start(
    client: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _create(client, owner)
    hook = await client.post(
        f"/api/workflows/{workflow_id}/triggers",
        json={"kind": "webhook", "verification": "token"},
        headers=owner.headers,
    )
    await _put(client, owner, workflow_id, _body("two", [STEP_A, STEP_B]))
    by_api = await client.post(
        f"/api/workflows/{workflow_id}/execute", json={"input": {}}, headers=owner.headers
    )
    assert by_api.status_code == 202, by_api.text
    by_hook = await client.post(
        f"/hooks/{hook.json()['id']}",
        json={},
        headers={"Authorization": f"Bearer {hook.json()['secret']}"},
    )
    assert by_hook.status_code == 202, by_hook.text
    for execution_id in (by_api.json()["execution_id"], by_hook.json()["execution_id"]):
        execution = await client.get(f"/api/executions/{execution_id}", headers=owner.headers)
        assert execution.json()["workflow_version"] == 2
    ran = await client.get(f"/api/workflows/{workflow_id}/versions/2", headers=owner.headers)
    assert ran.json()["definition"] == {"steps": [STEP_A, STEP_B]}


async def test_deleting_a_workflow_deletes_its_versions(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime
) -> None:
    workflow_id = await _create(client, owner)
    await _put(client, owner, workflow_id, _body("two", [STEP_A]))
    deleted = await client.delete(f"/api/workflows/{workflow_id}", headers=owner.headers)
    assert deleted.status_code == 204
    async with runtime.database.system_engine.connect() as conn:
        left = await conn.scalar(
            text("select count(*) from workflow_versions where workflow_id = :w"),
            {"w": uuid.UUID(workflow_id)},
        )
    assert left == 0


async def test_a_message_is_bounded(client: httpx.AsyncClient, owner: Account) -> None:
    too_long = await client.post(
        "/api/workflows", json=_body("wf", [STEP_A], message="x" * 501), headers=owner.headers
    )
    assert too_long.status_code == 422
    assert too_long.json()["error"]["code"] == "validation_failed"


@pytest.mark.parametrize(
    ("column", "value", "where"),
    [
        ("definition", {"steps": []}, "steps"),
        ("triggers", [{"id": str(uuid.uuid4()), "kind": "webhook", "verification": "nope"}], ""),
    ],
    ids=["definition", "trigger"],
)
async def test_a_version_todays_checks_refuse_is_not_restored_and_answers_422(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, column: str, value: Any, where: str
) -> None:
    """Saved under older, looser rules (planted here as such a row would be): a clear 422."""
    workflow_id = await _create(client, owner)
    saved = {"definition": {"steps": [STEP_A]}, "triggers": [], column: value}
    async with runtime.database.system_engine.begin() as conn:
        await conn.execute(
            text(
                "insert into workflow_versions (id, org_id, workflow_id, number, name, definition, "
                "triggers) values (gen_random_uuid(), :o, :w, 7, 'old', cast(:d as jsonb), "
                "cast(:t as jsonb))"
            ),
            {
                "o": owner.org_id,
                "w": uuid.UUID(workflow_id),
                "d": json.dumps(saved["definition"]),
                "t": json.dumps(saved["triggers"]),
            },
        )
    answer = await client.post(
        f"/api/workflows/{workflow_id}/versions/7/restore", headers=owner.headers
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "version_not_restorable"
    assert error["message"].startswith(f"version 7 can no longer be restored: {where}")
    workflow = (await client.get(f"/api/workflows/{workflow_id}", headers=owner.headers)).json()
    assert (workflow["version"], workflow["name"]) == (1, "wf")
