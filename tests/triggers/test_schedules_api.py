"""/api/workflows/{id}/schedules and /api/schedules: what is accepted (cron of five or six fields,
IANA zones, input templates reading only the tick), what the answers say (the next five runs),
who may do what, pause and resume, the per-organization cap, and the audit trail."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from taskloom.triggers.models import WorkflowSchedule
from tests.factories import Account, add_member, register
from tests.workers import create_workflow

STEPS = [{"id": "t", "type": "transform", "args": {"value": "{{ input }}"}}]


async def _create(
    api: httpx.AsyncClient, account: Account, workflow_id: str, **body: Any
) -> httpx.Response:
    return await api.post(
        f"/api/workflows/{workflow_id}/schedules", json=body, headers=account.headers
    )


async def _schedule(
    api: httpx.AsyncClient, account: Account, workflow_id: str, **body: Any
) -> dict[str, Any]:
    created = await _create(api, account, workflow_id, **body)
    assert created.status_code == 201, created.text
    return dict(created.json())


def _times(body: dict[str, Any]) -> list[datetime]:
    return [datetime.fromisoformat(t) for t in body["next_runs"]]


def _error_locs(response: httpx.Response) -> list[list[str]]:
    assert response.status_code == 422, response.text
    return [e["loc"] for e in response.json()["error"]["details"]["errors"]]


async def test_a_schedule_answers_with_its_next_five_runs_and_is_read_at_its_location(
    api: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    before = datetime.now(UTC)
    created = await _create(
        api, owner, workflow_id, cron="30 2 * * *", timezone="Europe/Berlin", input={"a": 1}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["location"] == f"/api/schedules/{body['id']}"
    assert body["workflow_id"] == workflow_id
    assert (body["cron"], body["timezone"], body["input"]) == (
        "30 2 * * *",
        "Europe/Berlin",
        {"a": 1},
    )
    assert (body["enabled"], body["overlap"], body["catch_up"]) == (True, "skip", "none")
    assert body["last_execution_id"] is None
    assert body["created_by"] == str(owner.user_id)
    # Five RFC 3339 UTC times, each 02:30 in Berlin on consecutive days, the first one after now.
    assert len(body["next_runs"]) == 5
    assert all(t.endswith("Z") for t in body["next_runs"]), body["next_runs"]
    runs = _times(body)
    berlin = [t.astimezone(ZoneInfo("Europe/Berlin")) for t in runs]
    assert all((t.hour, t.minute, t.second) == (2, 30, 0) for t in berlin), berlin
    assert [b.date() - a.date() for a, b in itertools.pairwise(berlin)] == [timedelta(days=1)] * 4
    assert before < runs[0] <= before + timedelta(days=1)

    read = await api.get(created.headers["location"], headers=owner.headers)
    assert read.status_code == 200
    assert read.json()["id"] == body["id"]
    assert read.json()["next_runs"] == body["next_runs"]
    listed = await api.get(f"/api/workflows/{workflow_id}/schedules", headers=owner.headers)
    assert [s["id"] for s in listed.json()] == [body["id"]]


async def test_six_fields_put_the_seconds_first_and_five_fields_run_on_whole_minutes(
    api: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    seconds = _times(await _schedule(api, owner, workflow_id, cron="*/10 * * * * *"))
    assert all(t.second % 10 == 0 and t.microsecond == 0 for t in seconds), seconds
    assert {b - a for a, b in itertools.pairwise(seconds)} == {timedelta(seconds=10)}
    minutes = _times(await _schedule(api, owner, workflow_id, cron="*/5 * * * *"))
    assert all(t.second == 0 and t.minute % 5 == 0 for t in minutes), minutes
    assert {b - a for a, b in itertools.pairwise(minutes)} == {timedelta(minutes=5)}
    # Six fields with seconds LAST would be croniter's reading: here "0 0 12 * * *" is noon.
    noon = _times(await _schedule(api, owner, workflow_id, cron="0 0 12 * * *"))
    assert all((t.hour, t.minute, t.second) == (12, 0, 0) for t in noon), noon


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "0 0 0 1 1 * 2030"}, "cron"),
        ({"cron": "not a cron"}, "cron"),
        ({"cron": "*/5 * * * *", "timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"cron": "*/5 * * * *", "timezone": "localtime"}, "timezone"),
        ({"cron": "*/5 * * * *", "overlap": "sometimes"}, "overlap"),
        ({"cron": "*/5 * * * *", "catch_up": "most"}, "catch_up"),
        ({"cron": "*/5 * * * *", "color": "blue"}, "color"),
    ],
)
async def test_an_invalid_schedule_gets_a_422_naming_the_field(
    api: httpx.AsyncClient, owner: Account, body: dict[str, Any], field: str
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    refused = await _create(api, owner, workflow_id, **body)
    assert ["body", field] in _error_locs(refused), refused.text
    listed = await api.get(f"/api/workflows/{workflow_id}/schedules", headers=owner.headers)
    assert listed.json() == []


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("{{ input.name }}", "schedule.tick and schedule.id"),
        ("{{ steps.x.output }}", "schedule.tick and schedule.id"),
        ("{{ schedule.owner }}", "owner"),
        ("{{ schedule.tick ", "template error"),
        ("{% for i in range(9) %}{{ i }}{% endfor %}", "only look values up"),
        ("{{ '\\u0000' }}", "NUL character"),
    ],
)
async def test_input_templates_may_only_read_the_tick_and_the_schedule_id(
    api: httpx.AsyncClient, owner: Account, value: str, why: str
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    refused = await _create(api, owner, workflow_id, cron="* * * * *", input={"v": {"w": value}})
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["error"]["details"]["errors"]
    assert error["loc"][:2] == ["body", "input"]
    assert why in error["message"], error
    accepted = await _create(
        api,
        owner,
        workflow_id,
        cron="* * * * *",
        input={"at": "{{ schedule.tick }}", "by": "schedule {{ schedule.id }}", "n": 3},
    )
    assert accepted.status_code == 201, accepted.text


async def test_pause_clears_the_next_runs_and_resume_computes_them_from_now(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    schedule = await _schedule(api, owner, workflow_id, cron="*/10 * * * * *")
    path = f"/api/schedules/{schedule['id']}"
    paused = await api.patch(path, json={"enabled": False}, headers=owner.headers)
    assert paused.status_code == 200, paused.text
    assert (paused.json()["enabled"], paused.json()["next_runs"]) == (False, [])
    assert (await api.get(path, headers=owner.headers)).json()["next_runs"] == []
    # While paused, its next tick falls far behind; a resume does not catch up on it.
    async with system_transaction(queue_runtime.database) as db:
        row = await db.get(WorkflowSchedule, uuid.UUID(schedule["id"]))
        assert row is not None
        row.next_tick_at = datetime.now(UTC) - timedelta(hours=3)
    before = datetime.now(UTC)
    resumed = await api.patch(path, json={"enabled": True}, headers=owner.headers)
    assert resumed.status_code == 200, resumed.text
    runs = _times(resumed.json())
    assert len(runs) == 5
    assert before < runs[0] <= before + timedelta(seconds=11)
    async with system_transaction(queue_runtime.database) as db:
        next_tick = await db.scalar(
            select(WorkflowSchedule.next_tick_at).where(
                WorkflowSchedule.id == uuid.UUID(schedule["id"])
            )
        )
    assert next_tick is not None
    assert before < next_tick <= before + timedelta(seconds=11)

    # Any subset of the fields; the others are unchanged.
    changed = await api.patch(
        path, json={"cron": "0 9 * * 1", "overlap": "queue"}, headers=owner.headers
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["cron"], body["overlap"], body["catch_up"], body["enabled"]) == (
        "0 9 * * 1",
        "queue",
        "none",
        True,
    )
    assert all(t.weekday() == 0 and t.hour == 9 for t in _times(body))
    bad = await api.patch(path, json={"timezone": "Nowhere/City"}, headers=owner.headers)
    assert _error_locs(bad) == [["body", "timezone"]]
    assert (await api.patch(path, json={}, headers=owner.headers)).json()["cron"] == "0 9 * * 1"


async def test_a_disabled_workflow_shows_no_next_runs(
    api: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    schedule = await _schedule(api, owner, workflow_id, cron="* * * * *")
    disabled = await api.patch(
        f"/api/workflows/{workflow_id}", json={"enabled": False}, headers=owner.headers
    )
    assert disabled.status_code == 200, disabled.text
    read = await api.get(f"/api/schedules/{schedule['id']}", headers=owner.headers)
    assert (read.json()["enabled"], read.json()["next_runs"]) == (True, [])


async def test_viewers_read_members_manage_and_other_organizations_get_404(
    api: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    viewer = await add_member(api, owner, role="viewer")
    member = await add_member(api, owner, role="member")
    stranger = await register(api, label="stranger", organization_name="Elsewhere")

    refused = await _create(api, viewer, workflow_id, cron="* * * * *")
    assert refused.status_code == 403, refused.text
    schedule = await _schedule(api, member, workflow_id, cron="* * * * *")
    path = f"/api/schedules/{schedule['id']}"
    assert (await api.get(path, headers=viewer.headers)).status_code == 200
    assert (await api.get(f"{path}/ticks", headers=viewer.headers)).json() == []
    for verb, body in (("PATCH", {"enabled": False}), ("DELETE", None)):
        answer = await api.request(verb, path, json=body, headers=viewer.headers)
        assert answer.status_code == 403, answer.text

    foreign: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", path, None),
        ("GET", f"{path}/ticks", None),
        ("PATCH", path, {"enabled": False}),
        ("DELETE", path, None),
        ("GET", f"/api/workflows/{workflow_id}/schedules", None),
        ("POST", f"/api/workflows/{workflow_id}/schedules", {"cron": "* * * * *"}),
    ]
    for verb, url, body in foreign:
        answer = await api.request(verb, url, json=body, headers=stranger.headers)
        assert answer.status_code == 404, (verb, url, answer.text)
    assert (await api.get(path, headers=owner.headers)).json()["enabled"] is True
    missing = await _create(api, owner, str(uuid.uuid4()), cron="* * * * *")
    assert missing.status_code == 404

    deleted = await api.delete(path, headers=member.headers)
    assert deleted.status_code == 204
    assert (await api.get(path, headers=owner.headers)).status_code == 404


async def test_deleting_the_workflow_deletes_its_schedules(
    api: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    schedule = await _schedule(api, owner, workflow_id, cron="* * * * *")
    assert (
        await api.delete(f"/api/workflows/{workflow_id}", headers=owner.headers)
    ).status_code == 204
    gone = await api.get(f"/api/schedules/{schedule['id']}", headers=owner.headers)
    assert gone.status_code == 404


async def test_schedule_changes_are_audited_without_their_input(
    api: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    schedule = await _schedule(
        api, owner, workflow_id, cron="0 * * * *", input={"secret_note": "s3cr3t"}
    )
    path = f"/api/schedules/{schedule['id']}"
    await api.patch(path, json={"enabled": False}, headers=owner.headers)
    await api.delete(path, headers=owner.headers)
    log = await api.get(
        "/api/audit-logs", params={"scope": "org", "limit": 20}, headers=owner.headers
    )
    assert log.status_code == 200, log.text
    rows = [e for e in log.json()["items"] if e["resource_id"] == schedule["id"]]
    by_action = {e["action"]: e for e in rows}
    assert set(by_action) == {"schedule.create", "schedule.update", "schedule.delete"}
    assert by_action["schedule.create"]["details"] == {
        "workflow_id": workflow_id,
        "cron": "0 * * * *",
        "timezone": "UTC",
        "enabled": True,
    }
    assert by_action["schedule.update"]["details"]["enabled"] is False
    assert by_action["schedule.update"]["details"]["fields"] == ["enabled"]
    assert all(e["resource_type"] == "schedule" for e in rows)
    assert all(e["actor_user_id"] == str(owner.user_id) for e in rows)
    assert "s3cr3t" not in log.text


async def test_an_organization_has_at_most_max_schedules_per_org(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limited = queue_runtime.settings.model_copy(update={"max_schedules_per_org": 2})
    monkeypatch.setattr(queue_runtime, "settings", limited)
    first = await create_workflow(api, owner, STEPS)
    second = await create_workflow(api, owner, STEPS)
    await _schedule(api, owner, first, cron="* * * * *")
    await _schedule(api, owner, second, cron="* * * * *")
    refused = await _create(api, owner, first, cron="0 * * * *")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "schedule_limit"
    assert "MAX_SCHEDULES_PER_ORG" in refused.json()["error"]["message"]
    # Another organization has its own allowance.
    other = await register(api, label="other", organization_name="Other Org")
    assert (
        await _create(api, other, await create_workflow(api, other, STEPS), cron="* * * * *")
    ).status_code == 201


async def test_ticks_are_listed_at_most_a_hundred_at_a_time(
    api: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await create_workflow(api, owner, STEPS)
    schedule = await _schedule(api, owner, workflow_id, cron="* * * * *")
    ticks = f"/api/schedules/{schedule['id']}/ticks"
    for limit in (0, 101):
        answer = await api.get(ticks, params={"limit": limit}, headers=owner.headers)
        assert answer.status_code == 422, answer.text
    assert (await api.get(ticks, params={"limit": 100}, headers=owner.headers)).json() == []
