"""The ticker (triggers/ticker.py): real worker processes fire a six-field schedule with the tick
in the input, and obey overlap (skip, allow, queue) against executions that wait; a disabled or
deleted workflow stops its schedules. Rounds run in this process (the worker's code, on the
same database) show catch-up after an outage, the misfire window, failed ticks (input that
does not render or conform, a full queue), the queue of waiting ticks and its cap, and the
metrics."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text, update

from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import WorkflowExecution
from taskloom.runtime import Runtime
from taskloom.triggers import ticker
from taskloom.triggers.cron import CronSchedule
from taskloom.triggers.models import WorkflowSchedule
from taskloom.triggers.schedules import rfc3339
from tests.factories import Account, register
from tests.triggers.schedule_support import (
    create_schedule,
    database_now,
    eventually,
    executions_of,
    pause,
    schedule_row,
    set_schedule,
    ticks_of,
)
from tests.workers import StartWorker, create_workflow, execute, wait_for_status

ECHO = [{"id": "t", "type": "transform", "args": {"value": "{{ input }}"}}]
SLOW = [{"id": "pause", "type": "wait", "args": {"for": "3s"}}]


def _metric(result: str) -> float:
    labels = {"kind": "schedule", "result": result}
    return REGISTRY.get_sample_value("workflow_triggers_total", labels) or 0.0


def _lag_count() -> float:
    return REGISTRY.get_sample_value("schedule_lag_seconds_count") or 0.0


async def _fire(runtime: Runtime) -> None:
    """What a worker's upkeep does, once, in this process."""
    await ticker.fire_schedules(runtime)


async def _started_ticks(runtime: Runtime, schedule_id: uuid.UUID, count: int) -> None:
    async def enough() -> bool | None:
        ticks = await ticks_of(runtime, schedule_id)
        return True if sum(t.status == "started" for t in ticks) >= count else None

    await eventually(enough, within=30, what=f"{count} started ticks of {schedule_id}")


# --- worker processes ---------------------------------------------------------------------------


async def test_a_six_field_schedule_starts_one_execution_per_tick_with_the_tick_in_its_input(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    workflow_id = await create_workflow(api, owner, ECHO, output="{{ steps.t.output }}")
    start_worker()
    schedule_id = await create_schedule(
        api,
        owner,
        workflow_id,
        cron="*/2 * * * * *",
        input={"tick": "{{ schedule.tick }}", "schedule": "{{ schedule.id }}", "fixed": 7},
    )
    await _started_ticks(queue_runtime, schedule_id, 3)
    await pause(api, owner, schedule_id)

    ticks = await ticks_of(queue_runtime, schedule_id)
    executions = await executions_of(queue_runtime, schedule_id)
    assert all(t.status == "started" for t in ticks), [(t.tick_at, t.status) for t in ticks]
    assert all(t.tick_at.second % 2 == 0 and t.tick_at.microsecond == 0 for t in ticks)
    gaps = {b.tick_at - a.tick_at for a, b in itertools.pairwise(ticks)}
    assert gaps == {timedelta(seconds=2)}, gaps
    # One execution per tick, and per execution its tick.
    assert sorted(str(t.execution_id) for t in ticks) == sorted(str(e.id) for e in executions)
    by_id = {e.id: e for e in executions}
    for tick in ticks:
        assert tick.execution_id is not None
        execution = by_id[tick.execution_id]
        assert execution.input == {
            "tick": rfc3339(tick.tick_at),
            "schedule": str(schedule_id),
            "fixed": 7,
        }
        assert (execution.trigger_kind, execution.trigger_id) == ("schedule", schedule_id)
        assert execution.triggered_by is None
    for execution in executions:
        done = await wait_for_status(api, owner, str(execution.id))
        assert done["status"] == "succeeded", done
        assert done["output"] == execution.input
        assert (done["trigger_kind"], done["trigger_id"]) == ("schedule", str(schedule_id))
    row = await schedule_row(queue_runtime, schedule_id)
    assert row.last_execution_id == ticks[-1].execution_id
    listed = await api.get(f"/api/schedules/{schedule_id}/ticks", headers=owner.headers)
    assert [t["tick_at"] for t in listed.json()] == [rfc3339(t.tick_at) for t in reversed(ticks)]


def _overlapping(executions: list[WorkflowExecution]) -> int:
    """How many executions ran while an earlier one of the list had not finished."""
    return sum(
        1
        for earlier, later in itertools.pairwise(executions)
        if earlier.finished_at is None or later.created_at < earlier.finished_at
    )


async def test_overlap_skips_allows_or_queues_a_tick_while_the_previous_execution_runs(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    start_worker()
    schedules = {}
    for mode in ("skip", "allow", "queue"):
        workflow_id = await create_workflow(api, owner, SLOW, name=f"slow-{mode}")
        schedules[mode] = await create_schedule(
            api, owner, workflow_id, cron="* * * * * *", overlap=mode
        )
    # Each execution waits 3 s; ticks come every second.
    await _started_ticks(queue_runtime, schedules["skip"], 2)
    await _started_ticks(queue_runtime, schedules["queue"], 2)
    for schedule_id in schedules.values():
        await pause(api, owner, schedule_id)
    for schedule_id in schedules.values():
        for execution in await executions_of(queue_runtime, schedule_id):
            await wait_for_status(api, owner, str(execution.id), within=30)

    ticks = {mode: await ticks_of(queue_runtime, s) for mode, s in schedules.items()}
    runs = {mode: await executions_of(queue_runtime, s) for mode, s in schedules.items()}
    status = {mode: [t.status for t in ticks[mode]] for mode in schedules}

    # skip: ticks while one runs are skipped, so no two executions ever overlap.
    assert "skipped" in status["skip"], status["skip"]
    assert {t.reason for t in ticks["skip"] if t.status == "skipped"} == {
        "the previous execution is still running"
    }
    assert _overlapping(runs["skip"]) == 0
    assert len(runs["skip"]) == status["skip"].count("started")
    # allow: every tick starts, executions overlap.
    assert set(status["allow"]) == {"started"}, status["allow"]
    assert len(runs["allow"]) == len(ticks["allow"])
    assert _overlapping(runs["allow"]) >= 1
    # queue: ticks wait and start one after another, in tick order, never overlapping; the
    # ones still waiting at the pause were dropped as skipped.
    started = [t for t in ticks["queue"] if t.status == "started"]
    assert len(started) >= 2
    assert [t.execution_id for t in started] == [e.id for e in runs["queue"]]
    assert _overlapping(runs["queue"]) == 0
    assert "queued" not in status["queue"]
    dropped = [t for t in ticks["queue"] if t.status == "skipped"]
    assert dropped, status["queue"]
    assert {t.reason for t in dropped} == {"the schedule was paused"}
    assert max(t.tick_at for t in started) < min(t.tick_at for t in dropped)
    assert (await schedule_row(queue_runtime, schedules["queue"])).queued_ticks == 0


async def test_a_disabled_or_deleted_workflow_stops_its_schedules(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    start_worker()
    disabled = await create_workflow(api, owner, ECHO, name="disabled")
    deleted = await create_workflow(api, owner, ECHO, name="deleted")
    paused = await create_schedule(api, owner, disabled, cron="* * * * * *", overlap="allow")
    gone = await create_schedule(api, owner, deleted, cron="* * * * * *", overlap="allow")
    await _started_ticks(queue_runtime, paused, 1)
    await _started_ticks(queue_runtime, gone, 1)

    answer = await api.patch(
        f"/api/workflows/{disabled}", json={"enabled": False}, headers=owner.headers
    )
    assert answer.status_code == 200, answer.text
    assert (await api.delete(f"/api/workflows/{deleted}", headers=owner.headers)).status_code == 204
    stopped = await database_now(queue_runtime)
    await asyncio.sleep(4)
    # A round that read the workflow as enabled just before may still fire one more tick.
    late = [t for t in await ticks_of(queue_runtime, paused) if t.tick_at > stopped]
    assert len(late) <= 1, late
    assert await ticks_of(queue_runtime, gone) == []
    assert await executions_of(queue_runtime, gone) == []
    assert (await api.get(f"/api/schedules/{gone}", headers=owner.headers)).status_code == 404
    # Its next tick moved on meanwhile: enabled again, it fires from now, nothing piled up.
    enabled = await api.patch(
        f"/api/workflows/{disabled}", json={"enabled": True}, headers=owner.headers
    )
    assert enabled.status_code == 200
    resumed = await database_now(queue_runtime)
    count = len(await ticks_of(queue_runtime, paused))
    await _started_ticks(queue_runtime, paused, count + 1)
    fresh = (await ticks_of(queue_runtime, paused))[count:]
    assert fresh
    assert all(t.tick_at >= resumed - timedelta(seconds=2) for t in fresh), fresh
    assert all(t.status == "started" for t in fresh)


# --- rounds in this process -------------------------------------------------------------------


def _far_minute(now: datetime) -> str:
    """An hourly cron whose ticks are half an hour away from now either way."""
    return f"{(now.minute + 30) % 60} * * * *"


async def test_missed_ticks_are_skipped_run_once_or_run_up_to_a_hundred_as_catch_up_says(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    now = await database_now(queue_runtime)
    cron = _far_minute(now)
    [last] = CronSchedule.parse(cron, "UTC").previous_before(now, 1, now - timedelta(hours=2))
    first = last - timedelta(hours=149)  # 150 ticks missed while "no worker ran"
    workflow_id = await create_workflow(api, owner, ECHO)
    schedules = {
        mode: await create_schedule(
            api,
            owner,
            workflow_id,
            cron=cron,
            catch_up=mode,
            overlap="allow",
            input={"tick": "{{ schedule.tick }}"},
        )
        for mode in ("none", "one", "all")
    }
    for schedule_id in schedules.values():
        await set_schedule(queue_runtime, schedule_id, next_tick_at=first)
    skipped, started, lags = _metric("skipped"), _metric("started"), _lag_count()

    await _fire(queue_runtime)

    newest = [last - timedelta(hours=h) for h in range(99, -1, -1)]  # the newest 100
    note = f"50 earlier missed ticks since {rfc3339(first)} were skipped and not recorded"
    missed = "missed: no worker was running"
    ticks = {mode: await ticks_of(queue_runtime, s) for mode, s in schedules.items()}
    runs = {mode: await executions_of(queue_runtime, s) for mode, s in schedules.items()}
    for mode in schedules:
        assert [t.tick_at for t in ticks[mode]] == newest, mode
        row = await schedule_row(queue_runtime, schedules[mode])
        assert row.next_tick_at == last + timedelta(hours=1)
    # none: every one skipped, the oldest recorded one counting those not recorded.
    assert {t.status for t in ticks["none"]} == {"skipped"}
    assert ticks["none"][0].reason == f"{missed}; {note}"
    assert {t.reason for t in ticks["none"][1:]} == {missed}
    assert runs["none"] == []
    # one: the newest runs.
    assert [t.status for t in ticks["one"]] == ["skipped"] * 99 + ["started"]
    assert ticks["one"][0].reason == f"{missed}; {note}"
    assert [e.input for e in runs["one"]] == [{"tick": rfc3339(last)}]
    assert ticks["one"][-1].execution_id == runs["one"][0].id
    # all: the newest hundred run, oldest first.
    assert {t.status for t in ticks["all"]} == {"started"}
    assert ticks["all"][0].reason == note
    # (Executions made in one round share their created_at: matched by tick, not by order.)
    by_id = {e.id: e for e in runs["all"]}
    assert len(by_id) == 100
    assert [by_id[t.execution_id].input["tick"] for t in ticks["all"]] == [
        rfc3339(t) for t in newest
    ]
    # Counted: 100 + 50 (none), 99 + 50 (one), 50 (all) skipped; 1 + 100 started.
    assert _metric("skipped") - skipped == 349
    assert _metric("started") - started == 101
    assert _lag_count() - lags == 101


async def test_ticks_within_the_misfire_window_always_run(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, ECHO)
    schedule_id = await create_schedule(
        api, owner, workflow_id, cron="* * * * * *", overlap="allow", catch_up="none"
    )
    now = await database_now(queue_runtime)
    behind = now.replace(microsecond=0) - timedelta(seconds=20)  # < SCHEDULE_MISFIRE_SECONDS
    await set_schedule(queue_runtime, schedule_id, next_tick_at=behind)
    await _fire(queue_runtime)
    await pause(api, owner, schedule_id)
    ticks = await ticks_of(queue_runtime, schedule_id)
    assert len(ticks) >= 21
    assert [t.tick_at for t in ticks] == [behind + timedelta(seconds=i) for i in range(len(ticks))]
    assert {t.status for t in ticks} == {"started"}
    assert len(await executions_of(queue_runtime, schedule_id)) == len(ticks)


async def test_a_tick_whose_input_does_not_render_or_conform_or_find_room_fails_with_the_reason(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    typed = await create_workflow(
        api,
        owner,
        ECHO,
        name="typed",
        input_schema={
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
        },
    )
    plain = await create_workflow(api, owner, ECHO, name="plain")
    nonconforming = await create_schedule(
        api, owner, typed, cron="* * * * * *", input={"n": "{{ schedule.tick }}"}
    )
    unrenderable = await create_schedule(api, owner, plain, cron="* * * * * *")
    # Saved before a template check existed, say: the API refuses it today.
    await set_schedule(queue_runtime, unrenderable, input={"x": "{{ schedule.nope }}"})
    now = (await database_now(queue_runtime)).replace(microsecond=0)
    for schedule_id in (nonconforming, unrenderable):
        await set_schedule(queue_runtime, schedule_id, next_tick_at=now)
    failed = _metric("failed")
    await _fire(queue_runtime)
    for schedule_id in (nonconforming, unrenderable):
        await pause(api, owner, schedule_id)

    [*_, conform] = await ticks_of(queue_runtime, nonconforming)
    assert conform.status == "failed"
    assert conform.reason is not None
    assert "input_schema" in conform.reason, conform.reason
    assert "input.n" in conform.reason, conform.reason
    [*_, render] = await ticks_of(queue_runtime, unrenderable)
    assert render.status == "failed"
    assert render.reason is not None
    assert render.reason.startswith("the input did not render: input.x"), render.reason
    assert await executions_of(queue_runtime, nonconforming) == []
    assert await executions_of(queue_runtime, unrenderable) == []
    assert _metric("failed") - failed >= 2

    # The organization's queue is full (MAX_QUEUED_PER_ORG=1, one execution queued, no
    # worker): the tick fails, the one queued stays the only one.
    limited = queue_runtime.settings.model_copy(update={"max_queued_per_org": 1})
    monkeypatch.setattr(queue_runtime, "settings", limited)
    waiting = await execute(api, owner, plain)
    full = await create_schedule(api, owner, plain, cron="* * * * * *")
    now = (await database_now(queue_runtime)).replace(microsecond=0)
    await set_schedule(queue_runtime, full, next_tick_at=now)
    await _fire(queue_runtime)
    await pause(api, owner, full)
    [first, *_] = await ticks_of(queue_runtime, full)
    assert first.status == "failed"
    assert first.reason is not None
    assert "already has 1 executions queued" in first.reason, first.reason
    assert await executions_of(queue_runtime, full) == []
    async with system_transaction(queue_runtime.database) as db:
        await db.execute(
            update(WorkflowExecution)
            .where(WorkflowExecution.id == uuid.UUID(waiting))
            .values(status="cancelled")
        )


_REFUSE_BOOM = [
    """create function taskloom_test_refuse_boom() returns trigger language plpgsql as $$
       begin raise exception 'refused by the test'; end $$""",
    """create trigger taskloom_test_refuse_boom before insert on workflow_executions
       for each row when (new.input ->> 'x' = 'boom')
       execute function taskloom_test_refuse_boom()""",
]
_ALLOW_BOOM = [
    "drop trigger if exists taskloom_test_refuse_boom on workflow_executions",
    "drop function if exists taskloom_test_refuse_boom()",
]


async def test_a_start_the_database_refuses_fails_only_its_own_tick(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, ECHO)
    doomed = await create_schedule(api, owner, workflow_id, cron="* * * * * *", input={"x": "boom"})
    fine = await create_schedule(api, owner, workflow_id, cron="* * * * * *", input={"x": "ok"})
    now = (await database_now(queue_runtime)).replace(microsecond=0)
    async with system_transaction(queue_runtime.database) as db:
        for statement in _REFUSE_BOOM:
            await db.execute(text(statement))
    try:
        for schedule_id in (doomed, fine):
            await set_schedule(queue_runtime, schedule_id, next_tick_at=now)
        await _fire(queue_runtime)
    finally:
        async with system_transaction(queue_runtime.database) as db:
            for statement in _ALLOW_BOOM:
                await db.execute(text(statement))
    for schedule_id in (doomed, fine):
        await pause(api, owner, schedule_id)
    [refused, *_] = await ticks_of(queue_runtime, doomed)
    assert (refused.status, refused.reason) == ("failed", "the execution could not be created")
    assert await executions_of(queue_runtime, doomed) == []
    [started, *_] = await ticks_of(queue_runtime, fine)
    assert started.status == "started"
    [execution, *_] = await executions_of(queue_runtime, fine)
    assert execution.id == started.execution_id


async def _previous(runtime: Runtime, schedule_id: uuid.UUID, status: str) -> None:
    row = await schedule_row(runtime, schedule_id)
    async with system_transaction(runtime.database) as db:
        await db.execute(
            update(WorkflowExecution)
            .where(WorkflowExecution.id == row.last_execution_id)
            .values(status=status, finished_at=datetime.now(UTC))
        )


async def test_queued_ticks_start_oldest_first_when_the_previous_execution_ends_up_to_ten(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, ECHO)
    schedule_id = await create_schedule(
        api,
        owner,
        workflow_id,
        cron="* * * * * *",
        overlap="queue",
        input={"t": "{{ schedule.tick }}"},
    )
    now = (await database_now(queue_runtime)).replace(microsecond=0)
    await set_schedule(queue_runtime, schedule_id, next_tick_at=now - timedelta(seconds=3))
    await _fire(queue_runtime)  # no worker: the first tick's execution stays queued
    ticks = await ticks_of(queue_runtime, schedule_id)
    assert ticks[0].status == "started"
    assert {t.status for t in ticks[1:]} == {"queued"}
    assert {t.reason for t in ticks[1:]} == {"waits for the previous execution to end"}
    waiting = len(ticks) - 1
    assert (await schedule_row(queue_runtime, schedule_id)).queued_ticks == waiting

    await _previous(queue_runtime, schedule_id, "succeeded")
    await ticker.drain_queued(queue_runtime)
    after = await ticks_of(queue_runtime, schedule_id)
    assert [t.status for t in after[:2]] == ["started", "started"]
    assert after[1].reason is None
    row = await schedule_row(queue_runtime, schedule_id)
    assert row.last_execution_id == after[1].execution_id
    assert row.queued_ticks == waiting - 1 + sum(t.status == "queued" for t in after[len(ticks) :])
    [started] = [
        e for e in await executions_of(queue_runtime, schedule_id) if e.id == row.last_execution_id
    ]
    assert started.input == {"t": rfc3339(after[1].tick_at)}
    # The new execution is queued: nothing more starts.
    await ticker.drain_queued(queue_runtime)
    assert [t.status for t in await ticks_of(queue_runtime, schedule_id)][2] == "queued"

    # At most ten ticks wait; beyond, they are skipped.
    await set_schedule(queue_runtime, schedule_id, queued_ticks=ticker.MAX_QUEUED_TICKS)
    later = await _after_the_last_tick(queue_runtime, schedule_id)
    await _fire(queue_runtime)
    await pause(api, owner, schedule_id)
    full = [t for t in await ticks_of(queue_runtime, schedule_id) if t.tick_at >= later]
    assert full
    assert {t.status for t in full} == {"skipped"}
    assert {t.reason for t in full} == {"queue of ticks full"}


async def _after_the_last_tick(runtime: Runtime, schedule_id: uuid.UUID) -> datetime:
    """Make the second after the schedule's last recorded tick its next one, and wait until it
    is due."""
    later = (await ticks_of(runtime, schedule_id))[-1].tick_at + timedelta(seconds=1)
    await set_schedule(runtime, schedule_id, next_tick_at=later)
    await asyncio.sleep(max(0.0, (later - await database_now(runtime)).total_seconds()) + 0.05)
    return later


async def test_a_tick_already_recorded_never_starts_again(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, ECHO)
    schedule_id = await create_schedule(
        api, owner, workflow_id, cron="* * * * * *", overlap="allow"
    )
    now = (await database_now(queue_runtime)).replace(microsecond=0)
    await set_schedule(queue_runtime, schedule_id, next_tick_at=now - timedelta(seconds=2))
    await _fire(queue_runtime)
    recorded = await ticks_of(queue_runtime, schedule_id)
    assert len(recorded) >= 3
    # Its next tick set back onto recorded ones (a clock that jumped back, say): the unique
    # (schedule, tick) row refuses them, and nothing starts for them.
    await set_schedule(queue_runtime, schedule_id, next_tick_at=recorded[0].tick_at)
    await _fire(queue_runtime)
    await pause(api, owner, schedule_id)
    ticks = await ticks_of(queue_runtime, schedule_id)
    assert [t.id for t in ticks[: len(recorded)]] == [t.id for t in recorded]
    executions = await executions_of(queue_runtime, schedule_id)
    assert sorted(str(e.id) for e in executions) == sorted(str(t.execution_id) for t in ticks)


async def test_a_disabled_workflows_schedules_record_nothing_and_move_on(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(api, owner, ECHO)
    schedule_id = await create_schedule(api, owner, workflow_id, cron="* * * * * *")
    answer = await api.patch(
        f"/api/workflows/{workflow_id}", json={"enabled": False}, headers=owner.headers
    )
    assert answer.status_code == 200
    now = await database_now(queue_runtime)
    await set_schedule(queue_runtime, schedule_id, next_tick_at=now - timedelta(hours=1))
    await _fire(queue_runtime)
    assert await ticks_of(queue_runtime, schedule_id) == []
    assert (await schedule_row(queue_runtime, schedule_id)).next_tick_at > now
    assert await executions_of(queue_runtime, schedule_id) == []


async def test_erasing_the_last_owner_stops_the_organizations_schedules(
    api: httpx.AsyncClient, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    """GDPR erasure of an organization's only member deletes the organization: its schedules go
    with it, and no tick fires for it again."""
    alone = await register(api, label="alone", organization_name="Solo Org")
    workflow_id = await create_workflow(api, alone, ECHO)
    schedule_id = await create_schedule(
        api, alone, workflow_id, cron="* * * * * *", overlap="allow"
    )
    start_worker()
    await eventually(
        lambda: _some(executions_of(queue_runtime, schedule_id)), within=30, what="a tick"
    )

    erased = await api.request(
        "DELETE",
        "/api/user/account",
        json={"confirm": "DELETE", "password": alone.password},
        headers=alone.headers,
    )
    assert erased.status_code == 200, erased.text

    async with system_transaction(queue_runtime.database) as db:
        left = await db.get(WorkflowSchedule, schedule_id)
    assert left is None
    await asyncio.sleep(2.5)  # a few seconds of this every-second schedule: nothing fires
    assert await ticks_of(queue_runtime, schedule_id) == []
    assert await executions_of(queue_runtime, schedule_id) == []


async def _some(found: Awaitable[list[Any]]) -> list[Any] | None:
    return (await found) or None


async def test_a_round_with_nothing_due_or_waiting_costs_one_transaction(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every worker runs the ticker every SCHEDULE_INTERVAL_SECONDS: while no tick is due and
    none waits, a round is one statement, not the three rounds' transactions; a due tick still
    fires in the same round."""
    workflow_id = await create_workflow(api, owner, ECHO)
    schedule_id = await create_schedule(api, owner, workflow_id, cron="0 0 0 1 1 *")
    now = await database_now(queue_runtime)
    await set_schedule(queue_runtime, schedule_id, next_tick_at=now + timedelta(days=1))
    transactions = [0]
    opened = ticker.system_transaction

    def counted(*args: Any, **kwargs: Any) -> Any:
        transactions[0] += 1
        return opened(*args, **kwargs)

    monkeypatch.setattr(ticker, "system_transaction", counted)
    await _fire(queue_runtime)
    assert transactions[0] == 1
    assert await ticks_of(queue_runtime, schedule_id) == []
    due = now.replace(microsecond=0) - timedelta(seconds=1)
    await set_schedule(queue_runtime, schedule_id, next_tick_at=due, cron="* * * * * *")
    await _fire(queue_runtime)
    await pause(api, owner, schedule_id)
    ticks = await ticks_of(queue_runtime, schedule_id)
    assert ticks
    assert ticks[0].tick_at == due
    assert ticks[0].status == "started"
