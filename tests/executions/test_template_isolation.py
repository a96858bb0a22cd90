"""A hostile template on a real worker process: its step fails with template_too_expensive
within 2 s while another organization's execution on the same worker runs to completion, and
twenty of them leave the worker's memory and CPU where they were."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.factories import Account, register
from tests.workers import StartWorker, create_workflow, execute, wait_for_status

BURNS_CPU = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
EATS_MEMORY = "{% set s = 'a' * 1000000 %}{{ s|replace('a', s) }}"
LOOPS = "{% for i in range(3) %}{{ input.name }}{% endfor %}"  # rendered in a child process


def _transform(template: str, step_id: str = "t") -> dict[str, Any]:
    return {"id": step_id, "type": "transform", "args": {"value": template}}


def _step_seconds(step: dict[str, Any]) -> float:
    started, finished = (datetime.fromisoformat(step[k]) for k in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def _assert_too_expensive(execution: dict[str, Any]) -> None:
    assert execution["status"] == "failed", execution
    assert execution["error"]["code"] == "template_too_expensive", execution["error"]
    assert _step_seconds(execution["steps"][0]) < 2.0, execution["steps"][0]


async def test_a_hostile_template_fails_fast_while_another_organizations_execution_runs(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    start_worker()
    other = await register(api, label="benign", organization_name="Benign Org")
    hostile_workflow = await create_workflow(api, owner, [_transform(BURNS_CPU)])
    benign_workflow = await create_workflow(
        api, other, [_transform(LOOPS), _transform("{{ steps.t.output }}!", "u")]
    )
    started = time.monotonic()
    hostile = await execute(api, owner, hostile_workflow)
    await wait_for_status(api, owner, hostile, {"running"}, within=10)
    benign = await execute(api, other, benign_workflow, {"name": "b"})

    benign_done = await wait_for_status(api, other, benign, within=10)
    benign_seconds = time.monotonic() - started
    hostile_done = await wait_for_status(api, owner, hostile, within=10)
    hostile_seconds = time.monotonic() - started

    assert benign_done["status"] == "succeeded", benign_done
    assert benign_done["output"] == "bbb!"
    _assert_too_expensive(hostile_done)
    assert benign_seconds < hostile_seconds  # it did not wait for the hostile render
    assert hostile_seconds < 5.0


async def test_twenty_hostile_templates_leave_the_worker_at_its_baseline(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    worker = start_worker()
    pid = worker.proc.pid
    workflows = [
        await create_workflow(api, owner, [_transform(t)]) for t in (BURNS_CPU, EATS_MEMORY)
    ]
    warm_up = [await execute(api, owner, workflows[i % 2]) for i in range(4)]
    for execution_id in warm_up:
        _assert_too_expensive(await wait_for_status(api, owner, execution_id, within=30))
    baseline_kib, baseline_tree_kib = _rss_kib([pid]), _rss_kib(_tree(pid))
    idle_cores = await _cpu_rate(pid)  # heartbeat, reconciler, dispatcher: the worker at rest

    hostile = [await execute(api, owner, workflows[i % 2]) for i in range(20)]
    for execution_id in hostile:
        _assert_too_expensive(await wait_for_status(api, owner, execution_id, within=60))

    # The worker itself, and with the processes it started (the render processes' fork server).
    assert _rss_kib([pid]) < baseline_kib + 20 * 1024, (baseline_kib, _rss_kib([pid]))
    tree_kib = _rss_kib(_tree(pid))
    assert tree_kib < baseline_tree_kib + 30 * 1024, (baseline_tree_kib, tree_kib)
    # Idle again: a render still running would add about a whole core. Compared with the same
    # worker's own rate at rest, so the machine's other load does not decide it.
    assert await _cpu_rate(pid) < idle_cores + 0.25, idle_cores


async def test_a_render_left_running_by_a_killed_worker_stops_on_its_own(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    worker = start_worker()
    workflow = await create_workflow(api, owner, [_transform(BURNS_CPU)])
    hostile = await execute(api, owner, workflow)
    await wait_for_status(api, owner, hostile, {"running"}, within=10)
    await asyncio.sleep(0.3)  # the render process is burning CPU
    helpers = _tree(worker.proc.pid)[1:]  # the fork server, render processes...
    worker.send(signal.SIGKILL)  # nobody left to enforce the deadline
    worker.wait(10)
    deadline, left = time.monotonic() + 40, helpers  # nice 5: slow on a saturated machine
    while time.monotonic() < deadline:
        left = [pid for pid in helpers if _running(pid)]
        if not left:
            break
        await asyncio.sleep(0.1)
    assert not left  # the render stopped itself after about 2 s of CPU


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has stopped


def _tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    children = [int(c) for task in tasks for c in (task / "children").read_text().split()]
    return [pid, *(p for child in children for p in _tree(child))]


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return total


async def _cpu_rate(pid: int, seconds: float = 2.0) -> float:
    """The cores the worker and its processes used over the next `seconds`."""
    before = _cpu_seconds(_tree(pid))
    await asyncio.sleep(seconds)
    return (_cpu_seconds(_tree(pid)) - before) / seconds


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes and of their children reaped so far (a render
    process that ended counts in its parent's); a process that has just gone counts as 0."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")
