"""Which steps of an execution start next, which are skipped, and how the execution ends: the
rules of `needs`, `join` and failures, as a pure function of the steps' states (ADR 0008).

- A step is *ready* when every step it needs has settled (succeeded, failed or skipped).
- `join` decides whether a ready step runs: `all_succeeded` (the default) only if every need
  succeeded, `all_done` whatever they did, `any_succeeded` if one of them did; otherwise it is
  skipped, which settles it in turn. A failure tolerated by `continue_on_error` counts as a
  success. In a chain (no step declares `needs`) a step skipped by `when` lets the next one run.
- After a failure that is not tolerated, running steps finish and `all_done` / `any_succeeded`
  joins that become ready still run; nothing else starts. Then the execution fails with the
  first failure's error.
- `when` is the runner's business: a step the plan starts may still be skipped by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taskloom.executions.models import StepStatus
from taskloom.workflows.graph import Graph

SETTLED = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED})


@dataclass
class StepState:
    status: str = StepStatus.PENDING
    output: Any = None
    error: dict[str, Any] | None = None
    tolerated: bool = False  # failed, but `continue_on_error` lets the work go on
    finished: float = 0.0  # when it settled (orders failures: the first one is reported)
    wake_at: datetime | None = None  # while waiting: when to look again (None: an event)


@dataclass
class Plan:
    graph: Graph
    states: dict[str, StepState] = field(default_factory=dict)

    def state(self, step_id: str) -> StepState:
        return self.states.setdefault(step_id, StepState())

    def ok(self, step_id: str) -> bool:
        """Whether the step counts as a success for the steps that need it."""
        state = self.state(step_id)
        if state.status == StepStatus.SUCCEEDED:
            return True
        if state.status == StepStatus.FAILED:
            return state.tolerated
        return state.status == StepStatus.SKIPPED and not self.graph.is_dag

    def failure(self) -> StepState | None:
        """The first failure that was not tolerated, if any."""
        failed = [
            s for s in self.states.values() if s.status == StepStatus.FAILED and not s.tolerated
        ]
        return min(failed, key=lambda s: s.finished) if failed else None

    def next(self) -> tuple[list[str], list[str]]:
        """(steps to start, steps to skip), in list order. Skipping settles a step, which may
        make others ready: call again after recording the skips."""
        failed = self.failure() is not None
        start: list[str] = []
        skip: list[str] = []
        for step_id in self.graph.order:
            if self.state(step_id).status != StepStatus.PENDING:
                continue
            needs = [n for n in self.graph.needs[step_id] if n in self.graph.steps]
            if any(self.state(n).status not in SETTLED for n in needs):
                continue
            join = self.graph.steps[step_id].get("join") or "all_succeeded"
            if join == "all_done":
                start.append(step_id)
            elif join == "any_succeeded":
                (start if not needs or any(self.ok(n) for n in needs) else skip).append(step_id)
            elif all(self.ok(n) for n in needs):
                if not failed:
                    start.append(step_id)
            else:
                skip.append(step_id)
        return start, skip

    def active(self) -> bool:
        """Some step is running or waiting."""
        return any(
            s.status not in SETTLED and s.status != StepStatus.PENDING for s in self.states.values()
        )

    def waiting(self) -> dict[str, StepState]:
        """The steps that wait (a time, a decision, a child)."""
        return {k: s for k, s in self.states.items() if s.status == StepStatus.WAITING}

    def unreached(self) -> list[str]:
        """Steps still pending once nothing more can start (behind a failure)."""
        return [s for s in self.graph.order if self.state(s).status == StepStatus.PENDING]

    def default_output(self) -> Any:
        """Without an `output` template: a chain's last step's output, a DAG's
        `{leaf: output}` for the leaves that ran."""
        if not self.graph.order:
            return None
        if not self.graph.is_dag:
            last = self.state(self.graph.order[-1])
            return last.output if last.status in (StepStatus.SUCCEEDED, StepStatus.FAILED) else None
        return {
            leaf: self.state(leaf).output
            for leaf in self.graph.leaves()
            if self.state(leaf).status == StepStatus.SUCCEEDED or self.state(leaf).tolerated
        }

    def scope_steps(self) -> Mapping[str, dict[str, Any]]:
        """`steps` as templates see it: the output and status of every settled step."""
        return {
            step_id: {"output": state.output, "status": str(state.status)}
            for step_id, state in self.states.items()
            if state.status in SETTLED
        }
