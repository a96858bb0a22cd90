"""Definitions that decide (ADR 0008), run by real worker processes: parallel branches, when,
each join rule, failures, for_each (order, max_parallel, a failing item), per-step retry and
timeout, the execution's deadline and output, and a SIGKILL in the middle of a for-each."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx

from tests.factories import Account
from tests.workers import (
    CountingServer,
    StartWorker,
    create_workflow,
    execute,
    unique_key,
    wait_for_status,
)


def _statuses(execution: dict[str, Any]) -> dict[str, str]:
    return {s["step_id"]: s["status"] for s in execution["steps"]}


async def test_roots_run_in_parallel_and_a_join_gets_every_output(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    group = unique_key("roots")
    keys = [unique_key(f"root{n}") for n in range(3)]
    steps: list[dict[str, Any]] = [
        {
            "id": f"r{n}",
            "type": "http",
            "needs": [],
            "args": {"url": counting_server.url(key, sleep=0.5, group=group)},
        }
        for n, key in enumerate(keys)
    ]
    steps.append(
        {
            "id": "join",
            "type": "transform",
            "needs": ["r0", "r1", "r2"],
            "args": {"value": "{{ [steps.r0.output.body.call, steps.r2.output.status] }}"},
        }
    )
    workflow_id = await create_workflow(
        api, owner, steps, output={"joined": "{{ steps.join.output }}", "n": "{{ input.n }}"}
    )
    start_worker()
    execution_id = await execute(api, owner, workflow_id, {"n": 7})
    done = await wait_for_status(api, owner, execution_id)

    assert done["status"] == "succeeded", done
    assert counting_server.log.max_inflight[group] == 3  # the three roots at once
    assert [counting_server.calls(k) for k in keys] == [1, 1, 1]
    assert done["output"] == {"joined": [1, 200], "n": 7}
    assert set(_statuses(done).values()) == {"succeeded"}


async def test_when_and_each_join_rule(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {"id": "a", "type": "transform", "needs": [], "args": {"value": "a"}},
            {
                "id": "maybe",
                "type": "transform",
                "needs": [],
                "when": "{{ input.go }}",
                "args": {"value": "ran"},
            },
            {"id": "behind", "type": "transform", "needs": ["maybe"], "args": {"value": 1}},
            {
                "id": "anyway",
                "type": "transform",
                "needs": ["maybe"],
                "join": "all_done",
                "args": {"value": "{{ steps.maybe.status }}"},
            },
            {
                "id": "either",
                "type": "transform",
                "needs": ["a", "maybe"],
                "join": "any_succeeded",
                "args": {"value": "{{ steps.a.output }}"},
            },
        ],
    )
    start_worker()
    skipped = await wait_for_status(
        api, owner, await execute(api, owner, workflow_id, {"go": "FALSE"})
    )
    assert skipped["status"] == "succeeded", skipped
    assert _statuses(skipped) == {
        "a": "succeeded",
        "maybe": "skipped",
        "behind": "skipped",  # all_succeeded behind a skipped need
        "anyway": "succeeded",  # all_done runs whatever its needs did
        "either": "succeeded",  # any_succeeded: `a` did
    }
    # Without an output template a DAG's output is its leaves that ran.
    assert skipped["output"] == {"anyway": "skipped", "either": "a"}

    ran = await wait_for_status(api, owner, await execute(api, owner, workflow_id, {"go": True}))
    assert set(_statuses(ran).values()) == {"succeeded"}
    assert ran["output"] == {"behind": 1, "anyway": "succeeded", "either": "a"}

    wrong = await wait_for_status(api, owner, await execute(api, owner, workflow_id, {"go": "y"}))
    assert wrong["status"] == "failed"
    assert wrong["error"]["code"] == "when_not_boolean"
    assert wrong["error"]["step_id"] == "maybe"


async def test_a_failure_lets_the_running_branch_and_an_all_done_join_finish(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    bad, slow, late = unique_key("bad"), unique_key("slow"), unique_key("late")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "bad",
                "type": "http",
                "needs": [],
                "args": {"url": counting_server.url(bad, fail=1, status=400)},
            },
            {
                "id": "slow",
                "type": "http",
                "needs": [],
                "args": {"url": counting_server.url(slow, sleep=1)},
            },
            {"id": "after_bad", "type": "transform", "needs": ["bad"], "args": {"value": 1}},
            {
                "id": "after_slow",
                "type": "http",
                "needs": ["slow"],
                "args": {"url": counting_server.url(late)},
            },
            {
                "id": "cleanup",
                "type": "transform",
                "needs": ["bad", "slow"],
                "join": "all_done",
                "args": {"value": "{{ steps.slow.output.status }}"},
            },
        ],
    )
    start_worker()
    done = await wait_for_status(api, owner, await execute(api, owner, workflow_id))

    assert done["status"] == "failed", done
    assert done["error"]["step_id"] == "bad"
    assert done["error"]["code"] == "http_status"
    assert _statuses(done) == {
        "bad": "failed",
        "slow": "succeeded",  # already running: it finished
        "after_bad": "skipped",
        "after_slow": "skipped",  # not started after the failure
        "cleanup": "succeeded",
    }
    assert counting_server.calls(slow) == 1
    assert counting_server.calls(late) == 0
    assert next(s for s in done["steps"] if s["step_id"] == "cleanup")["output"] == 200


async def test_for_each_keeps_item_order_and_max_parallel(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    group, key = unique_key("items"), unique_key("item")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "each",
                "type": "http",
                "for_each": "{{ input.names }}",
                "max_parallel": 2,
                "args": {
                    "method": "POST",
                    "url": counting_server.url(key + "-{{ index }}", sleep=0.3, group=group),
                    "json": {"name": "{{ item }}", "at": "{{ index }}"},
                },
            },
            {
                "id": "names",
                "type": "transform",
                "args": {
                    "value": "{{ steps.each.output | map(attribute='body.body.name') | list }}"
                },
            },
        ],
    )
    start_worker()
    names = ["ann", "bob", "cy", "dee", "eve"]
    execution_id = await execute(api, owner, workflow_id, {"names": names})
    done = await wait_for_status(api, owner, execution_id)

    assert done["status"] == "succeeded", done
    assert done["output"] == names  # item order, whatever order they finished in
    assert counting_server.log.max_inflight[group] == 2
    for index in range(5):
        assert counting_server.log.idempotency_keys[f"{key}-{index}"] == [
            f"{execution_id}:each:{index}"
        ]


async def test_one_failed_item_fails_the_step_unless_errors_are_tolerated(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    key = unique_key("flaky")

    strict = await create_workflow(
        api,
        owner,
        [
            {
                "id": "each",
                "type": "http",
                "for_each": "{{ [0, 1, 2] }}",
                "args": {
                    "url": "{{ input.base }}/count/" + key + "-s{{ item }}{{ input.fail[item] }}"
                },
            }
        ],
    )
    start_worker()
    base = counting_server.base
    fail = ["", "?fail=9&status=400", ""]
    failed = await wait_for_status(
        api, owner, await execute(api, owner, strict, {"base": base, "fail": fail})
    )
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "http_status"
    assert failed["error"]["item_index"] == 1
    assert counting_server.calls(f"{key}-s1") == 1  # a 400 is not retried

    tolerant = await create_workflow(
        api,
        owner,
        [
            {
                "id": "each",
                "type": "http",
                "for_each": "{{ [0, 1, 2] }}",
                "continue_on_error": True,
                "args": {
                    "url": "{{ input.base }}/count/" + key + "-t{{ item }}{{ input.fail[item] }}"
                },
            },
            {"id": "after", "type": "transform", "args": {"value": "{{ steps.each.output }}"}},
        ],
    )
    done = await wait_for_status(
        api, owner, await execute(api, owner, tolerant, {"base": base, "fail": fail})
    )
    assert done["status"] == "succeeded", done
    outputs = done["output"]
    assert [o.get("status") for o in (outputs[0], outputs[2])] == [200, 200]
    assert outputs[1]["error"]["code"] == "http_status"
    assert outputs[1]["error"]["item_index"] == 1


async def test_a_steps_retry_policy_and_timeout(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    flaky, hung = unique_key("flaky"), unique_key("hung")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "flaky",
                "type": "http",
                "retry": {"max_attempts": 4, "backoff": "fixed", "delay": "100ms"},
                "args": {"url": counting_server.url(flaky, fail=3)},  # 503 three times
            },
            {
                "id": "hung",
                "type": "http",
                "timeout": "300ms",
                "retry": {"max_attempts": 2, "delay": "100ms", "on": ["step_timeout"]},
                "args": {"url": counting_server.url(hung, sleep=3)},
            },
        ],
    )
    start_worker()
    started = time.monotonic()
    done = await wait_for_status(api, owner, await execute(api, owner, workflow_id))

    assert done["status"] == "failed", done
    assert counting_server.calls(flaky) == 4
    assert counting_server.calls(hung) == 2
    steps = {s["step_id"]: s for s in done["steps"]}
    assert steps["flaky"]["status"] == "succeeded"
    assert steps["flaky"]["attempts"] == 4
    assert steps["hung"]["attempts"] == 2
    assert done["error"]["code"] == "step_timeout"
    assert time.monotonic() - started < 10  # neither 3 s call was waited out twice


async def test_the_deadline_fails_the_execution(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    key = unique_key("long")
    workflow_id = await create_workflow(
        api,
        owner,
        [{"id": "long", "type": "http", "args": {"url": counting_server.url(key, sleep=4)}}],
        deadline="1s",
    )
    start_worker()
    done = await wait_for_status(api, owner, await execute(api, owner, workflow_id), within=10)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "deadline_exceeded"
    assert _statuses(done) == {"long": "failed"}


async def test_sigkill_during_a_for_each_reruns_only_unfinished_items(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    key = unique_key("killed")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "each",
                "type": "http",
                "for_each": "{{ range(20) | list }}",
                "max_parallel": 3,
                "args": {"url": counting_server.url(key + "-{{ item }}", sleep=0.3)},
            }
        ],
    )
    # A short lock: the killed worker's job is taken over within a few seconds.
    quick = {"queue_lock_duration_ms": 2_000, "queue_stalled_interval_ms": 1_000}
    first = start_worker(**quick)
    execution_id = await execute(api, owner, workflow_id)
    deadline = time.monotonic() + 30
    while sum(counting_server.calls(f"{key}-{i}") for i in range(20)) < 7:
        assert time.monotonic() < deadline, "the items never started"
        await asyncio.sleep(0.02)
    first.send(signal.SIGKILL)
    first.wait(10)
    start_worker(**quick)
    done = await wait_for_status(api, owner, execution_id, within=60)

    assert done["status"] == "succeeded", done
    calls = [counting_server.calls(f"{key}-{i}") for i in range(20)]
    assert all(c >= 1 for c in calls), calls
    twice = [i for i, c in enumerate(calls) if c > 1]
    assert all(c <= 2 for c in calls), calls
    assert len(twice) <= 3, calls  # at most the items in flight when it was killed
    assert [o["status"] for o in done["output"]] == [200] * 20


async def test_for_each_items_outputs_are_bounded_together(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    """Each item's output is under the 1 MB cap, but together they are not: the step fails at
    the item that crosses it instead of holding every output in the worker's memory."""
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "big",
                "type": "transform",
                "for_each": "{{ range(10) | list }}",
                "args": {"value": "{{ 'x' * 400000 }}"},
            }
        ],
    )
    start_worker()
    done = await wait_for_status(api, owner, await execute(api, owner, workflow_id), within=60)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "output_too_large"
    assert done["error"]["item_index"] == 2  # the third 400 kB output crosses 1 MB
    [step] = done["steps"]
    assert step["items"]["succeeded"] == 3


async def test_one_execution_does_at_most_max_parallel_per_execution_at_once(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    """Three parallel branches of four items each, four at a time: twelve calls could run at
    once, but the execution's budget is five."""
    group = unique_key("budget")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": f"b{n}",
                "type": "http",
                "needs": [],
                "for_each": "{{ [0, 1, 2, 3] }}",
                "max_parallel": 4,
                "args": {"url": counting_server.url(f"{group}-{n}", sleep=0.4, group=group)},
            }
            for n in range(3)
        ],
    )
    start_worker(max_parallel_per_execution=5)
    done = await wait_for_status(api, owner, await execute(api, owner, workflow_id), within=30)
    assert done["status"] == "succeeded", done
    assert counting_server.log.max_inflight[group] == 5
    assert [counting_server.calls(f"{group}-{n}") for n in range(3)] == [4, 4, 4]
