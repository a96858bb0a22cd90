"""Exactly one execution per schedule tick, however many processes run: two worker processes
fire the same one-second schedules while two API processes (this one and a `taskloom api`)
create and pause them; then one of two workers is SIGKILLed while ticks flow, and the other
carries on. Every tick has one row and one execution, consecutive seconds with no gap, and
every execution runs (one whose submission died with its worker is submitted by the
reconciler)."""

from __future__ import annotations

import asyncio
import itertools
import signal
import statistics
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from taskloom.config import Settings
from taskloom.runtime import Runtime
from tests.cli_support import serve_api
from tests.factories import Account
from tests.servers import free_port
from tests.triggers.schedule_support import (
    create_schedule,
    database_now,
    eventually,
    executions_of,
    pause,
    ticks_of,
)
from tests.workers import TERMINAL, StartWorker, create_workflow, worker_env

ECHO = [{"id": "t", "type": "transform", "args": {"value": "{{ input }}"}}]
SECOND = timedelta(seconds=1)


@pytest.fixture
def second_api(queue_settings: Settings, tmp_path: Path) -> Iterator[str]:
    """A `taskloom api` process on the same database and Redis: its base URL."""
    port = free_port()
    process = serve_api(worker_env(queue_settings), port, tmp_path / "api.log")
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=15)


async def _every_second(
    clients: list[httpx.AsyncClient], owner: Account, count: int
) -> list[uuid.UUID]:
    """`count` schedules firing every second (each on its own workflow, overlap allow, so every
    tick starts), made through the given API processes in turn."""
    made = []
    for number, client in zip(range(count), itertools.cycle(clients), strict=False):
        workflow_id = await create_workflow(client, owner, ECHO, name=f"every-second-{number}")
        made.append(
            await create_schedule(
                client,
                owner,
                workflow_id,
                cron="* * * * * *",
                overlap="allow",
                input={"tick": "{{ schedule.tick }}"},
            )
        )
    return made


async def _check_exactly_once(
    runtime: Runtime, schedule_id: uuid.UUID, *, since: datetime, until: datetime
) -> list[float]:
    """Every tick of the schedule is one started row with one execution of its own, the ticks
    are consecutive seconds and cover [since, until]. Returns each tick's lag to its execution
    row (seconds)."""
    ticks = await ticks_of(runtime, schedule_id)
    executions = await executions_of(runtime, schedule_id)
    assert ticks, schedule_id
    assert {t.status for t in ticks} == {"started"}, [(t.tick_at, t.reason) for t in ticks]
    gaps = [
        (a.tick_at, b.tick_at)
        for a, b in itertools.pairwise(ticks)
        if b.tick_at - a.tick_at != SECOND
    ]
    assert gaps == [], gaps
    assert ticks[0].tick_at <= since + 2 * SECOND
    assert ticks[-1].tick_at >= until - 2 * SECOND
    tick_executions = [t.execution_id for t in ticks]
    assert len(set(tick_executions)) == len(ticks)
    assert sorted(map(str, tick_executions)) == sorted(str(e.id) for e in executions)
    by_id = {e.id: e for e in executions}
    lags = []
    for tick in ticks:
        assert tick.execution_id is not None
        execution = by_id[tick.execution_id]
        assert execution.input == {"tick": tick.tick_at.isoformat().replace("+00:00", "Z")}
        lags.append((execution.created_at - tick.tick_at).total_seconds())
    return lags


async def _all_ended(runtime: Runtime, schedules: list[uuid.UUID], within: float) -> None:
    async def ended() -> bool | None:
        for schedule_id in schedules:
            for execution in await executions_of(runtime, schedule_id):
                if execution.status not in TERMINAL:
                    return None
        return True

    await eventually(ended, within=within, what="every scheduled execution ended")
    for schedule_id in schedules:
        statuses = {e.status for e in await executions_of(runtime, schedule_id)}
        assert statuses == {"succeeded"}, statuses


def _report(label: str, lags: list[float]) -> None:
    ordered = sorted(lags)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(  # shown with -s: the lag from a tick to its execution row
        f"{label}: {len(lags)} ticks, lag to the execution row p50 "
        f"{statistics.median(lags):.3f} s, p99 {p99:.3f} s, max {ordered[-1]:.3f} s"
    )


async def test_two_workers_and_two_api_processes_start_exactly_one_execution_per_tick(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    start_worker: StartWorker,
    second_api: str,
) -> None:
    workers = [start_worker(), start_worker()]
    async with httpx.AsyncClient(base_url=second_api, timeout=30) as other:
        schedules = await _every_second([api, other], owner, 10)
        since = await database_now(queue_runtime)
        await asyncio.sleep(8)
        until = await database_now(queue_runtime)
        for number, schedule_id in enumerate(schedules):
            await pause(other if number % 2 else api, owner, schedule_id)
    lags = []
    for schedule_id in schedules:
        lags += await _check_exactly_once(queue_runtime, schedule_id, since=since, until=until)
    # Both workers fired ticks: they really competed for them.
    for worker in workers:
        assert worker.logged("schedule_ticks"), worker.output()
    await _all_ended(queue_runtime, schedules, within=60)
    _report("two workers", lags)


async def test_a_worker_killed_while_ticks_flow_loses_and_duplicates_none(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    start_worker: StartWorker,
) -> None:
    # Jobs the killed worker was running are given back within seconds, not the default 5 min.
    recover = {
        "queue_lock_duration_ms": 3_000,
        "queue_stalled_interval_ms": 500,
        "queue_max_stalled_count": 100,
    }
    doomed, survivor = start_worker(**recover), start_worker(**recover)
    schedules = await _every_second([api], owner, 20)
    since = await database_now(queue_runtime)
    await doomed.wait_for_log("schedule_ticks", times=3, within=30)
    doomed.send(signal.SIGKILL)
    doomed.wait(timeout=10)
    killed = await database_now(queue_runtime)
    await asyncio.sleep(5)
    until = await database_now(queue_runtime)
    for schedule_id in schedules:
        await pause(api, owner, schedule_id)
    for schedule_id in schedules:
        await _check_exactly_once(queue_runtime, schedule_id, since=since, until=until)
        after = [t for t in await ticks_of(queue_runtime, schedule_id) if t.tick_at > killed]
        assert len(after) >= 3, after  # the survivor kept firing
    assert survivor.logged("schedule_ticks")
    # An execution whose submission died with its worker is submitted by the reconciler.
    await _all_ended(queue_runtime, schedules, within=90)
