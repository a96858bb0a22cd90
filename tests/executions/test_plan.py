"""The rules of needs, join and failures (executions/plan.py), without a worker: which steps
start, which are skipped, and how the execution ends."""

from __future__ import annotations

from typing import Any

from taskloom.executions.models import StepStatus
from taskloom.executions.plan import Plan, StepState
from taskloom.workflows.graph import Graph


def _plan(*steps: dict[str, Any]) -> Plan:
    return Plan(Graph.of({"steps": [{"type": "transform", "args": {}, **s} for s in steps]}))


def _settle(
    plan: Plan, step_id: str, status: str, *, tolerated: bool = False, at: float = 0
) -> None:
    plan.states[step_id] = StepState(
        status=status, output=step_id, error={"code": step_id}, tolerated=tolerated, finished=at
    )


def _run(plan: Plan, outcomes: dict[str, str]) -> list[str]:
    """Drive the plan to its end: each started step settles as `outcomes` says (default
    succeeded). Returns the steps in the order they started."""
    started: list[str] = []
    clock = 0.0
    while True:
        start, skip = plan.next()
        for step_id in skip:
            _settle(plan, step_id, StepStatus.SKIPPED)
        if not start and not skip:
            return started
        for step_id in start:
            started.append(step_id)
            clock += 1
            _settle(plan, step_id, outcomes.get(step_id, StepStatus.SUCCEEDED), at=clock)


def test_a_chain_runs_in_list_order_and_its_output_is_the_last_steps() -> None:
    plan = _plan({"id": "a"}, {"id": "b"}, {"id": "c"})
    assert plan.next() == (["a"], [])
    assert _run(plan, {}) == ["a", "b", "c"]
    assert plan.failure() is None
    assert plan.default_output() == "c"


def test_a_chain_goes_on_past_a_step_skipped_by_when() -> None:
    plan = _plan({"id": "a"}, {"id": "b"}, {"id": "c"})
    assert _run(plan, {"b": StepStatus.SKIPPED}) == ["a", "b", "c"]
    assert plan.state("c").status == StepStatus.SUCCEEDED


def test_roots_start_together_and_a_join_waits_for_every_need() -> None:
    plan = _plan(
        {"id": "a", "needs": []},
        {"id": "b", "needs": []},
        {"id": "c", "needs": ["a", "b"]},
    )
    assert plan.next() == (["a", "b"], [])
    _settle(plan, "a", StepStatus.SUCCEEDED)
    plan.states["b"] = StepState(status=StepStatus.RUNNING)
    assert plan.next() == ([], [])
    assert plan.active()
    _settle(plan, "b", StepStatus.SUCCEEDED)
    assert plan.next() == (["c"], [])
    _settle(plan, "c", StepStatus.SUCCEEDED)
    assert plan.default_output() == {"c": "c"}


def test_all_succeeded_skips_behind_a_skipped_need_and_the_skip_cascades() -> None:
    plan = _plan(
        {"id": "a", "needs": []},
        {"id": "b", "needs": ["a"]},
        {"id": "c", "needs": ["b"]},
        {"id": "d", "needs": ["b"], "join": "all_done"},
    )
    assert _run(plan, {"a": StepStatus.SKIPPED}) == ["a", "d"]
    assert plan.state("b").status == StepStatus.SKIPPED
    assert plan.state("c").status == StepStatus.SKIPPED
    assert plan.failure() is None
    assert plan.default_output() == {"d": "d"}  # c was skipped: not in the output


def test_any_succeeded_runs_when_one_need_succeeded_and_is_skipped_when_none_did() -> None:
    plan = _plan(
        {"id": "a", "needs": []},
        {"id": "b", "needs": []},
        {"id": "either", "needs": ["a", "b"], "join": "any_succeeded"},
        {"id": "c", "needs": []},
        {"id": "neither", "needs": ["b", "c"], "join": "any_succeeded"},
    )
    _run(plan, {"b": StepStatus.SKIPPED, "c": StepStatus.SKIPPED})
    assert plan.state("either").status == StepStatus.SUCCEEDED
    assert plan.state("neither").status == StepStatus.SKIPPED


def test_a_failure_lets_all_done_and_any_succeeded_joins_run_and_starts_nothing_else() -> None:
    plan = _plan(
        {"id": "bad", "needs": []},
        {"id": "slow", "needs": []},
        {"id": "after_bad", "needs": ["bad"]},
        {"id": "after_slow", "needs": ["slow"]},
        {"id": "cleanup", "needs": ["bad", "slow"], "join": "all_done"},
        {"id": "any", "needs": ["bad", "slow"], "join": "any_succeeded"},
    )
    assert plan.next() == (["bad", "slow"], [])
    _settle(plan, "bad", StepStatus.FAILED, at=1)
    plan.states["slow"] = StepState(status=StepStatus.RUNNING)
    assert plan.next() == ([], ["after_bad"])  # behind the failure: skipped
    _settle(plan, "after_bad", StepStatus.SKIPPED)
    _settle(plan, "slow", StepStatus.SUCCEEDED, at=2)  # the running branch finished
    start, skip = plan.next()
    assert start == ["cleanup", "any"]  # the joins that do not need every success
    assert skip == []  # after_slow is not skipped, it is never started
    _settle(plan, "cleanup", StepStatus.SUCCEEDED, at=3)
    _settle(plan, "any", StepStatus.SUCCEEDED, at=4)
    assert plan.next() == ([], [])
    assert plan.unreached() == ["after_slow"]
    failure = plan.failure()
    assert failure is not None
    assert failure.error == {"code": "bad"}


def test_the_first_failure_is_the_one_reported() -> None:
    plan = _plan({"id": "a", "needs": []}, {"id": "b", "needs": []})
    _settle(plan, "b", StepStatus.FAILED, at=1)
    _settle(plan, "a", StepStatus.FAILED, at=2)
    failure = plan.failure()
    assert failure is not None
    assert failure.error == {"code": "b"}


def test_a_tolerated_failure_counts_as_a_success() -> None:
    plan = _plan({"id": "a", "needs": []}, {"id": "b", "needs": ["a"]})
    _settle(plan, "a", StepStatus.FAILED, tolerated=True)
    assert plan.next() == (["b"], [])
    assert plan.failure() is None


def test_scope_steps_shows_settled_steps_only() -> None:
    plan = _plan({"id": "a", "needs": []}, {"id": "b", "needs": []})
    _settle(plan, "a", StepStatus.SUCCEEDED)
    plan.states["b"] = StepState(status=StepStatus.RUNNING)
    assert plan.scope_steps() == {"a": {"output": "a", "status": "succeeded"}}
