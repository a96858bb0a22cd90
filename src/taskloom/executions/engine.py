"""Runs one execution's graph inside its job (ADR 0008): every step whose needs are met starts as
a task, up to the definition's `max_parallel_steps`; a `for_each` step runs its items as tasks,
at most `max_parallel` at a time. Each step (and item) records itself in its own short
transactions (executions/state.py), so a job that runs again resumes from the rows: finished
steps and items are never run again, interrupted ones are.

A step's own policies apply inside its task: `when` (skipped unless it renders true), `retry`
(attempts with a backoff, in the task; without one, EXECUTION_MAX_ATTEMPTS with exponential
backoff for retryable errors), `timeout`, `continue_on_error`. The definition's `deadline`
bounds the whole execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from taskloom.executions import control, state
from taskloom.executions.live import LiveEvents
from taskloom.executions.models import ExecutionStatus, StepStatus
from taskloom.executions.plan import Plan, StepState
from taskloom.executions.queue import ExecutionQueue
from taskloom.executions.state import Run
from taskloom.executions.steps import STEP_TYPES, RetryableStepError, StepContext, StepError
from taskloom.executions.template_process import TemplateRenderer
from taskloom.executions.templating import TemplateProblem, secret_references
from taskloom.net import SecretHostNotAllowed, restricted_to
from taskloom.observability import sentry, tracing
from taskloom.runtime import Runtime
from taskloom.secrets.resolution import ExecutionSecrets, SecretNotFound
from taskloom.workflows.control import CONTROL_ARGS
from taskloom.workflows.durations import parse_duration
from taskloom.workflows.graph import Graph

log = structlog.get_logger("taskloom.queue")

MAX_OUTPUT_BYTES = 1_048_576
DEFAULT_MAX_PARALLEL_STEPS = 4
MAX_BACKOFF_SECONDS = 300.0
CANCEL_POLL_SECONDS = 2.0
MAX_READY_ROUNDS = 50  # park attempts in one job before parking regardless (a safety net)
FORCED_WAKE_SECONDS = 5
CONTROL_TYPES = frozenset(CONTROL_ARGS)  # wait, approval, workflow: run by the engine itself
_CANCELLED = {
    "code": "cancelled",
    "message": "the execution was cancelled while this ran",
}  # while steps run, how often a cancel request is looked for
Key = tuple[str, int | None]  # (step id, item index or None for the step itself)


class Cancelled(Exception):
    """A cancel was requested while the execution ran."""


@dataclass
class Finished:
    """How the execution ended, as the runner reports it to BullMQ."""

    status: str  # succeeded | failed | cancelled
    step_id: str | None = None
    code: str | None = None


@dataclass
class _Outcome:
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    tolerated: bool = False
    finished_execution: bool = False  # the step's transaction also finished the execution
    # Whether a cancel was requested, as the step's own last call read it (None: not read)
    cancel_requested: bool | None = None
    wake_at: datetime | None = None  # waiting: when to look again (None: an event wakes it)


@dataclass
class Engine:
    runtime: Runtime
    templates: TemplateRenderer
    run: Run
    on_progress: Callable[[], Awaitable[None]]
    graph: Graph = field(init=False)
    plan: Plan = field(init=False)
    running: set[Key] = field(default_factory=set)  # rows this engine marked running
    step_runs: int = 0  # step and item runs of this execution so far (bounded)
    _tasks: dict[asyncio.Task[_Outcome], str] = field(default_factory=dict)
    _ready_rounds: int = 0  # parks refused because something waited for had happened
    _budget: asyncio.Semaphore = field(init=False)  # step and item runs doing work at once
    # The organization secrets each step's templates read (only steps that read any), and the
    # execution's resolved ones: None when the definition reads none (the usual case costs
    # nothing more than the scan below, and nothing is redacted).
    _secret_refs: dict[str, frozenset[str]] = field(init=False)
    secrets: ExecutionSecrets | None = field(init=False, default=None)
    live: LiveEvents = field(init=False)  # the execution's live stream (executions/live.py)

    def __post_init__(self) -> None:
        self.graph = Graph.of(self.run.definition)
        self.plan = Plan(self.graph, dict(self.run.states))
        self.step_runs = self.run.step_runs
        self._budget = asyncio.Semaphore(self.runtime.settings.max_parallel_per_execution)
        self.live = LiveEvents(
            self.runtime.redis, self.runtime.keys, self.run.execution_id, scrub=self.run.scrubbed
        )
        # State changes publish through the run (executions/state.py); the claim's `running`
        # goes with the first commit point's events, at no round trip of its own.
        self.run.live = self.live
        self.live.add("execution", {"status": str(ExecutionStatus.RUNNING)})
        self._secret_refs = {}
        for step_id, step in self.graph.steps.items():
            try:
                names = secret_references(step)
            except TemplateProblem:
                names = frozenset({""})  # refused at save time; fails the step when it runs
            if names:
                self._secret_refs[step_id] = names
        try:
            output_names = secret_references(self.run.definition.get("output"))
        except TemplateProblem:
            output_names = frozenset({""})
        if output_names:
            self._secret_refs[""] = output_names  # "": the execution's output template
        if self._secret_refs:
            self.secrets = ExecutionSecrets(
                database=self.runtime.database, cipher=self.runtime.cipher, org_id=self.run.org_id
            )
            self.run.redact_secrets = self.secrets.redact

    # --- the execution --------------------------------------------------------------------------

    async def execute(self) -> Finished:
        """Run the graph to its end; the execution's row is finished on return."""
        deadline = self._deadline()
        try:
            async with asyncio.timeout_at(deadline) if deadline is not None else _no_timeout():
                return await self._drive()
        except TimeoutError:
            if deadline is None or asyncio.get_running_loop().time() < deadline:
                raise
            await self._stop_tasks()
            return await self._fail_now("deadline_exceeded", "the execution's deadline passed")
        except Cancelled:
            await self._stop_tasks()
            await state.interrupted(self.runtime.database, self.run, self.running, error=_CANCELLED)
            await state.finish(self.runtime.database, self.run, ExecutionStatus.CANCELLED)
            log.info("execution_cancelled")
            return Finished("cancelled")
        finally:
            await self._stop_tasks()
            await self.live.flush()  # what no commit point sent (a park, a hand-back)
            if self.secrets is not None:
                self.secrets.release()

    async def run_inline(self, definition_text: str) -> bool:
        """An unclaimed inline execution (executions/inline.py): its one step run, and its
        output and the execution's end committed in one call, if the row is still the one the
        run was made from. False: it was not, or the step failed; nothing was written, and the
        caller claims it and runs it the usual way (the step again: it does nothing twice)."""
        step_id = self.graph.order[0]
        step = self.graph.steps[step_id]
        timeout = _timeout_of(step)
        rendered: list[Any] = [None]
        try:
            output = await self._attempt(step_id, None, step, self._scope(), 1, timeout, rendered)
        except StepError:
            return False
        last, execution_output = self._finishing(step_id, output)
        if not last:
            return False
        return await state.finished_inline(
            self.runtime.database,
            self.run,
            definition_text=definition_text,
            step_id=step_id,
            type_=str(step["type"]),
            args=rendered[0],
            output=output,
            execution_output=execution_output,
        )

    async def _drive(self) -> Finished:
        database = self.runtime.database
        limit = int(self.run.definition.get("max_parallel_steps") or DEFAULT_MAX_PARALLEL_STEPS)
        # Whether a cancel was requested, as last read (None: ask before starting steps): the
        # claim has just looked, and so has the success of each step (migration 0018).
        cancel: bool | None = False
        while True:
            start, skip = self.plan.next()
            if skip:
                await state.skip_steps(database, self.run, self._positions(skip))
                now = time.monotonic()
                for step_id in skip:
                    self.plan.states[step_id] = StepState(StepStatus.SKIPPED, finished=now)
                continue
            start = start[: max(limit - len(self._tasks), 0)]
            if start and cancel is None:
                cancel = await state.cancel_requested(database, self.run)
            if start and cancel:
                raise Cancelled()
            cancel = None
            for step_id in start:
                self.plan.state(step_id).status = StepStatus.RUNNING
                task = asyncio.ensure_future(self._step(step_id))
                self._tasks[task] = step_id
            if not self._tasks:
                if (finished := await self._end()) is not None:
                    return finished
                continue  # something a waiting step waits for has happened: look again
            done, _ = await asyncio.wait(
                self._tasks, timeout=CANCEL_POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # steps still running: a cancel request reaches them too
                if await state.cancel_requested(database, self.run):
                    raise Cancelled()
                continue
            answers = set()
            for task in done:
                step_id = self._tasks.pop(task)
                outcome = task.result()  # a task raises only for infrastructure: propagate
                answers.add(outcome.cancel_requested)
                self.plan.states[step_id] = StepState(
                    status=outcome.status,
                    output=outcome.output,
                    error=outcome.error,
                    tolerated=outcome.tolerated,
                    finished=time.monotonic(),
                    wake_at=outcome.wake_at,
                )
                if outcome.finished_execution:
                    return Finished("succeeded")
            # Known only when every step that just ended read it; a request any one saw counts.
            cancel = True if True in answers else (False if answers == {False} else None)
            await self.on_progress()

    async def _end(self) -> Finished | None:
        """Nothing runs and nothing can start: the execution parks (some steps wait), fails
        (a failure), or succeeds. None: a waiting step can go on now (run it again)."""
        database = self.runtime.database
        failure = self.plan.failure()
        if failure is None and (waiting := self.plan.waiting()):
            times = [s.wake_at for s in waiting.values() if s.wake_at is not None]
            if deadline := self._deadline_at():
                times.append(deadline)
            self._ready_rounds += 1
            if self._ready_rounds > MAX_READY_ROUNDS:  # something reads as ready but is not
                log.error("execution_park_forced", steps=sorted(waiting))
                times = [datetime.now(UTC) + timedelta(seconds=FORCED_WAKE_SECONDS)]
            parked = await state.park(
                database,
                self.run,
                wake_at=min(times, default=None),
                force=self._ready_rounds > MAX_READY_ROUNDS,
            )
            if parked is state.Parked.YES:
                log.info("execution_waiting", steps=sorted(waiting))
                return Finished("waiting")
            if parked is state.Parked.CANCEL:
                raise Cancelled()
            for step_id in waiting:  # READY: they run again and find what they waited for
                self.plan.states[step_id] = StepState()
            return None
        if failure is not None:
            if unreached := self.plan.unreached():
                await state.skip_steps(database, self.run, self._positions(unreached))
            error = failure.error or {"code": "failed"}
            await state.finish(database, self.run, ExecutionStatus.FAILED, error=error)
            return Finished("failed", step_id=error.get("step_id"), code=error.get("code"))
        try:
            output = await self._output()
        except StepError as error:
            detail = {**error.as_json(), "step_id": "output"}
            await state.finish(database, self.run, ExecutionStatus.FAILED, error=detail)
            return Finished("failed", step_id="output", code=error.code)
        await state.finish(database, self.run, ExecutionStatus.SUCCEEDED, output=output)
        return Finished("succeeded")

    async def _output(self) -> Any:
        template = self.run.definition.get("output")
        if template is None:
            return self.plan.default_output()
        scope = self._scope()
        if "" in self._secret_refs:
            scope["secrets"] = await self._secret_values("")
        try:
            rendered = await self.templates.render(template, scope, path="output")
        except TemplateProblem as problem:
            raise StepError(str(problem), code=problem.code) from problem
        return _checked_output(self._redact(rendered))

    def _finishing(self, step_id: str, output: Any) -> tuple[bool, Any]:
        """Whether the success of `step_id` ends the execution (nothing else running or left to
        start, no failure, no output template), and the execution's output then: its
        transaction finishes the execution too, one round trip fewer (the one-step path)."""
        if self.run.definition.get("output") is not None or len(self._tasks) > 1:
            return False, None
        saved = self.plan.states.get(step_id)
        self.plan.states[step_id] = StepState(StepStatus.SUCCEEDED, output=output)
        try:
            if self.plan.failure() is None and self.plan.next() == ([], []):
                return True, self.plan.default_output()
            return False, None
        finally:
            if saved is None:
                self.plan.states.pop(step_id, None)
            else:
                self.plan.states[step_id] = saved

    async def _fail_now(self, code: str, message: str) -> Finished:
        error = {"code": code, "message": message}
        await state.interrupted(self.runtime.database, self.run, self.running, error=error)
        await state.finish(self.runtime.database, self.run, ExecutionStatus.FAILED, error=error)
        return Finished("failed", step_id=None, code=code)

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._tasks.clear()

    def _deadline_at(self) -> datetime | None:
        text = self.run.definition.get("deadline")
        if not text:
            return None
        return (self.run.started_at or datetime.now(UTC)) + parse_duration(text)

    def _deadline(self) -> float | None:
        text = self.run.definition.get("deadline")
        if not text:
            return None
        started = self.run.started_at or datetime.now(UTC)
        left = (started + parse_duration(text) - datetime.now(UTC)).total_seconds()
        return asyncio.get_running_loop().time() + max(left, 0.0)

    def _positions(self, step_ids: list[str]) -> list[tuple[str, int, str]]:
        order = self.graph.order
        return [(s, order.index(s), str(self.graph.steps[s]["type"])) for s in step_ids]

    def _scope(self, **extra: Any) -> dict[str, Any]:
        return {"input": self.run.input, "steps": self.plan.scope_steps(), **extra}

    # --- one step -------------------------------------------------------------------------------

    async def _step(self, step_id: str) -> _Outcome:
        step = self.graph.steps[step_id]
        with (
            tracing.tracer().start_as_current_span(
                f"step {step['type']}", attributes={"taskloom.step_id": step_id}
            )
            if tracing.enabled()
            else contextlib.nullcontext()
        ):
            scope = self._scope()
            if step_id in self._secret_refs:
                try:
                    scope["secrets"] = await self._secret_values(step_id)
                except StepError as error:
                    return await self._failed_without_run(step_id, error)
            if (when := step.get("when")) is not None:
                try:
                    go = _boolean(
                        await self.templates.render(when, scope, path=f"steps.{step_id}.when")
                    )
                except (TemplateProblem, StepError) as problem:
                    code = getattr(problem, "code", "template_error")
                    return await self._failed_without_run(
                        step_id, StepError(str(problem), code=code)
                    )
                if not go:
                    await state.skip_steps(
                        self.runtime.database, self.run, self._positions([step_id])
                    )
                    return _Outcome(StepStatus.SKIPPED)
            if step.get("for_each") is not None:
                return await self._for_each(step_id, step, scope)
            if step["type"] in CONTROL_TYPES:
                return await self._control(step_id, None, step, scope)
            return await self._attempts(step_id, None, step, scope)

    async def _failed_without_run(self, step_id: str, error: StepError) -> _Outcome:
        """A step that fails before any attempt: its `when` or `for_each` did not render, or
        rendered something it may not be."""
        step = self.graph.steps[step_id]
        database = self.runtime.database
        await state.start_step(
            database,
            self.run,
            step_id=step_id,
            position=self.graph.order.index(step_id),
            type_=step["type"],
        )
        detail = self._redact({**error.as_json(), "step_id": step_id})
        tolerated = bool(step.get("continue_on_error"))
        stored = {"error": detail} if tolerated else None
        await state.step_failed(
            database, self.run, step_id=step_id, error=detail, final=True, args=None, output=stored
        )
        return _Outcome(StepStatus.FAILED, stored, detail, tolerated)

    async def _for_each(
        self, step_id: str, step: Mapping[str, Any], scope: dict[str, Any]
    ) -> _Outcome:
        """Run the step once per item, at most `max_parallel` at a time; its output is the list
        of the items' outputs in order. Items that finished before an interruption keep their
        outputs. One item failing for good (without continue_on_error) starts no more items
        and fails the step once the running ones have finished."""
        database, settings = self.runtime.database, self.runtime.settings
        try:
            items = await self.templates.render(
                step["for_each"], scope, path=f"steps.{step_id}.for_each"
            )
        except TemplateProblem as problem:
            error = StepError(str(problem), code=problem.code)
            return await self._failed_without_run(step_id, error)
        if not isinstance(items, list):
            error = StepError("for_each must render to a list", code="for_each_not_list")
            return await self._failed_without_run(step_id, error)
        limit = settings.max_for_each_items
        if len(items) > limit:
            error = StepError(
                f"for_each rendered {len(items)} items, more than {limit}", code="too_many_items"
            )
            return await self._failed_without_run(step_id, error)
        position = self.graph.order.index(step_id)
        self.running.add((step_id, None))  # before its start is recorded, as in _attempts
        await state.start_step(
            database, self.run, step_id=step_id, position=position, type_=step["type"]
        )
        before = self.run.items.get(step_id, {})
        tolerated = bool(step.get("continue_on_error"))
        outputs: list[Any] = [None] * len(items)
        parallel = min(int(step.get("max_parallel") or 1), settings.max_parallel_items)
        gate = asyncio.Semaphore(parallel)
        failures: list[dict[str, Any]] = []
        waiting: dict[int, datetime | None] = {}  # items that wait (approvals, waits, children)
        size = [0]  # bytes of the items' outputs so far

        async def one(index: int, item: Any) -> None:
            previous = before.get(index)
            if previous is not None and (
                previous.status == StepStatus.SUCCEEDED
                or (previous.status == StepStatus.FAILED and tolerated)
            ):
                outputs[index] = previous.output
                size[0] += len(json.dumps(previous.output))  # counts towards the bound too
                return
            async with gate:
                if failures:
                    return
                outcome = await self._attempts(
                    step_id, index, step, {**scope, "item": item, "index": index}
                )
            if outcome.status == StepStatus.WAITING:
                waiting[index] = outcome.wake_at
            elif outcome.status == StepStatus.SUCCEEDED or outcome.tolerated:
                outputs[index] = outcome.output
                # Finished for good: if the step runs again in this job (a waiting item's
                # event came before it parked), this item is not run again.
                self.run.items.setdefault(step_id, {})[index] = state.Item(
                    status=outcome.status, output=outcome.output
                )
                # The step's output is bounded like any step's: stop as soon as its items'
                # outputs together are over it (not after holding 1,000 of them in memory).
                size[0] += len(json.dumps(outcome.output))
                if size[0] > MAX_OUTPUT_BYTES:
                    failures.append(
                        {
                            "code": "output_too_large",
                            "message": f"the items' outputs are larger than {MAX_OUTPUT_BYTES}"
                            " bytes together",
                            "step_id": step_id,
                            "item_index": index,
                        }
                    )
                await self.on_progress()  # an item finished: earlier stalls no longer count
            else:
                failures.append(outcome.error or {"code": "failed", "step_id": step_id})

        await _gather_all([one(i, item) for i, item in enumerate(items)])
        if failures:
            first = min(failures, key=lambda e: int(e.get("item_index", 0)))
            await state.step_failed(
                database, self.run, step_id=step_id, error=first, final=True, args=None
            )
            self.running.discard((step_id, None))
            return _Outcome(StepStatus.FAILED, None, first)
        if waiting:
            times = [t for t in waiting.values() if t is not None]
            wake_at = min(times, default=None)
            await state.mark_waiting(
                database, self.run, step_id=step_id, item_index=None, wake_at=wake_at
            )
            self.running.discard((step_id, None))
            return _Outcome(StepStatus.WAITING, wake_at=wake_at)
        try:
            output = _checked_output(outputs)
        except StepError as error:
            detail = {**error.as_json(), "step_id": step_id}
            await state.step_failed(
                database, self.run, step_id=step_id, error=detail, final=True, args=None
            )
            self.running.discard((step_id, None))
            return _Outcome(StepStatus.FAILED, None, detail)
        succeeded = await self._succeeded(step_id, None, None, output)
        self.running.discard((step_id, None))
        return succeeded

    async def _attempts(
        self, step_id: str, index: int | None, step: Mapping[str, Any], scope: dict[str, Any]
    ) -> _Outcome:
        """Run a step (or one item of it) under its retry policy and timeout."""
        if step["type"] in CONTROL_TYPES:
            return await self._control(step_id, index, step, scope)
        database, settings = self.runtime.database, self.runtime.settings
        policy = _RetryPolicy.of(step.get("retry"), settings)
        timeout = _timeout_of(step)
        tolerated = bool(step.get("continue_on_error"))
        while True:
            rendered: list[Any] = [None]
            failure: StepError | None = None
            # Steps and items of this execution doing work at once, all together, are at most
            # MAX_PARALLEL_PER_EXECUTION: however it fans out, one execution's load is bounded.
            async with self._budget:
                # A step without I/O (`transform`) records its run with its result, one round
                # trip instead of two; one that fails records its start first (below).
                started = not (index is None and _without_io(step))
                # Running before its start is recorded: a start interrupted mid-call (a deadline,
                # a cancel) may have committed, and its row must not stay `running`.
                self.running.add((step_id, index))
                attempt = await self._start(step_id, index, step) if started else 0
                try:
                    self._count_run()
                    output = await self._attempt(
                        step_id, index, step, scope, attempt or 1, timeout, rendered
                    )
                except StepError as raised:
                    failure = raised
            if failure is not None:
                if not started:
                    attempt = await self._start(step_id, index, step)
                detail = self._redact({**failure.as_json(), "step_id": step_id, "attempt": attempt})
                if index is not None:
                    detail["item_index"] = index
                final = not policy.retries(failure, attempt)
                stored = {"error": detail} if final and tolerated else None
                await state.record_failure(
                    database,
                    self.run,
                    step_id=step_id,
                    item_index=index,
                    error=detail,
                    final=final,
                    args=rendered[0],
                    output=stored,
                )
                self.running.discard((step_id, index))
                log.warning(
                    "step_failed",
                    step_id=step_id,
                    item_index=index,
                    final=final,
                    code=failure.code,
                )
                if final:
                    return _Outcome(StepStatus.FAILED, stored, detail, tolerated)
                await asyncio.sleep(policy.delay(attempt))
                continue
            succeeded = await self._succeeded(step_id, index, rendered[0], output, started=started)
            self.running.discard((step_id, index))
            return succeeded

    async def _control(
        self, step_id: str, index: int | None, step: Mapping[str, Any], scope: dict[str, Any]
    ) -> _Outcome:
        """A `wait`, `approval` or `workflow` step (or item): ask for what it waits for once,
        then report WAITING until it has happened (ADR 0008). It runs again from its row each
        time its execution resumes."""
        database, settings = self.runtime.database, self.runtime.settings
        key = (step_id, index)
        started = await state.start_control(
            database,
            self.run,
            step_id=step_id,
            item_index=index,
            position=self.graph.order.index(step_id),
            type_=str(step["type"]),
        )
        self.running.add(key)
        args: Any = None
        try:
            try:
                args = await self.templates.render(
                    step.get("args", {}), scope, path=f"steps.{step_id}.args"
                )
            except TemplateProblem as problem:
                raise StepError(str(problem), code=problem.code) from problem
            # No request leaves a control step: what it passes on (an approval's message, a
            # child's input) carries secrets redacted.
            args = self._redact(args)
            if step["type"] == "wait":
                # Its end was fixed when it first started (a resumed wait keeps it).
                until = started.wake_at or control.wait_until(args)
                if until > datetime.now(UTC):
                    await state.mark_waiting(
                        database, self.run, step_id=step_id, item_index=index, wake_at=until
                    )
                    return _Outcome(StepStatus.WAITING, wake_at=until)
                return await self._succeeded(
                    step_id, index, args, {"waited_until": until.isoformat()}
                )
            if step["type"] == "approval":
                found = await control.approval(
                    database, settings, self.run, step_id=step_id, item_index=index, args=args
                )
            else:
                found, created = await control.child(
                    database,
                    settings,
                    self.run,
                    step_id=step_id,
                    item_index=index,
                    existing=started.child_execution_id,
                    workflow_id=uuid.UUID(str(args["workflow"])),
                    input=args.get("input") or {},
                )
                if created is not None:
                    await ExecutionQueue(self.runtime).submit(
                        execution_id=created, org_id=self.run.org_id
                    )
            if isinstance(found, control.Done):
                return await self._succeeded(step_id, index, args, _checked_output(found.output))
            await state.mark_waiting(
                database,
                self.run,
                step_id=step_id,
                item_index=index,
                wake_at=found.wake_at,
                child_execution_id=started.child_execution_id,
            )
            return _Outcome(StepStatus.WAITING, wake_at=found.wake_at)
        except StepError as error:
            detail = self._redact({**error.as_json(), "step_id": step_id})
            if index is not None:
                detail["item_index"] = index
            tolerated = bool(step.get("continue_on_error"))
            stored = {"error": detail} if tolerated else None
            await state.record_failure(
                database,
                self.run,
                step_id=step_id,
                item_index=index,
                error=detail,
                final=True,
                args=args,
                output=stored,
            )
            log.warning("step_failed", step_id=step_id, item_index=index, code=error.code)
            return _Outcome(StepStatus.FAILED, stored, detail, tolerated)
        finally:
            self.running.discard(key)

    async def _succeeded(
        self, step_id: str, index: int | None, args: Any, output: Any, *, started: bool = True
    ) -> _Outcome:
        """Record a success of a step (or item); the step's may end the execution too.
        `started`: its start was recorded (not for a step without I/O)."""
        database = self.runtime.database
        if index is not None:
            await state.item_succeeded(
                database, self.run, step_id=step_id, item_index=index, args=args, output=output
            )
            return _Outcome(StepStatus.SUCCEEDED, output)
        last, execution_output = self._finishing(step_id, output)
        cancel = await state.step_succeeded(
            database,
            self.run,
            step_id=step_id,
            position=self.graph.order.index(step_id),
            type_=str(self.graph.steps[step_id]["type"]),
            started=started,
            args=args,
            output=output,
            last=last,
            execution_output=execution_output,
        )
        log.info("step_succeeded", step_id=step_id)
        return _Outcome(
            StepStatus.SUCCEEDED, output, finished_execution=last, cancel_requested=cancel
        )

    async def _start(self, step_id: str, index: int | None, step: Mapping[str, Any]) -> int:
        database = self.runtime.database
        if index is not None:
            return await state.start_item(database, self.run, step_id=step_id, item_index=index)
        position = self.graph.order.index(step_id)
        return await state.start_step(
            database, self.run, step_id=step_id, position=position, type_=step["type"]
        )

    async def _attempt(
        self,
        step_id: str,
        index: int | None,
        step: Mapping[str, Any],
        scope: dict[str, Any],
        attempt: int,
        limit: float | None,
        rendered: list[Any],
    ) -> Any:
        """One attempt's output, or StepError (infrastructure blinks become retryable errors,
        bugs `internal_error`); the rendered arguments go in `rendered[0]`."""
        step_type = STEP_TYPES.get(step["type"])
        try:
            if step_type is None:
                raise StepError(f"unknown step type {step['type']!r}", code="unknown_step_type")
            try:
                rendered[0] = await self.templates.render(
                    step.get("args", {}), scope, path=f"steps.{step_id}.args"
                )
                parsed = step_type.Args.model_validate(rendered[0])
            except TemplateProblem as problem:
                raise StepError(str(problem), code=problem.code) from problem
            except ValidationError as invalid:
                raise StepError(
                    f"steps.{step_id}.args: {_first_error(invalid)}", code="invalid_args"
                ) from invalid
            context = StepContext(
                settings=self.runtime.settings,
                org_id=self.run.org_id,
                execution_id=self.run.execution_id,
                step_id=step_id,
                item_index=index,
                attempt=attempt,
                triggered_by=self.run.triggered_by,
                runtime=self.runtime,
                live=self.live.emit,
                scrub=self.run.scrubbed,
                progress=self.on_progress,
            )
            names = self._secret_refs.get(step_id)
            try:
                if names and self.secrets is not None:
                    output = await self._run_restricted(step_type, parsed, context, limit, names)
                else:
                    async with asyncio.timeout(limit):
                        output = await step_type.run(parsed, context)
            except TimeoutError as error:
                if limit is None:
                    raise
                raise RetryableStepError(
                    f"the step took longer than its timeout ({step['timeout']})",
                    code="step_timeout",
                ) from error
            return _checked_output(self._redact(output))
        except StepError:
            raise
        except (OSError, TimeoutError, DBAPIError, RedisError) as error:
            log.warning("step_infrastructure_error", step_id=step_id, error=repr(error))
            raise RetryableStepError(
                f"internal error ({type(error).__name__})", code="internal"
            ) from error
        except Exception as error:  # a bug: fail the step visibly rather than retry blindly
            log.exception("step_crashed", step_id=step_id)
            sentry.capture(error, execution_id=self.run.execution_id, step_id=step_id)
            raise StepError(
                f"internal error ({type(error).__name__})", code="internal_error"
            ) from error

    # --- organization secrets (docs/SECRETS.md) -------------------------------------------------

    async def _secret_values(self, step_id: str) -> dict[str, str]:
        """The values a step's (or, for "", the output's) templates read, or StepError
        `secret_not_found` (also for a template that misuses `secrets`)."""
        names = self._secret_refs[step_id]
        where = "the output" if step_id == "" else f"step {step_id!r}"
        if "" in names or self.secrets is None:
            raise StepError(
                f"{where} uses secrets other than as {{{{ secrets.NAME }}}}",
                code="secret_misused",
            )
        try:
            return await self.secrets.values(names)
        except SecretNotFound as missing:
            raise StepError(
                f"{where} reads secrets the organization does not have: "
                + ", ".join(missing.names),
                code="secret_not_found",
                details={"names": missing.names},
            ) from None

    async def _run_restricted(
        self, step_type: Any, parsed: Any, context: StepContext, limit: float | None, names: Any
    ) -> Any:
        """Run a step that reads secrets: every request it sends, through any outbound client,
        must go to a host all of them allow (checked by the transports before anything is sent,
        net.restricted_to); a refusal fails it with `secret_host_not_allowed` whatever the
        step's client made of it."""
        assert self.secrets is not None
        hosts = self.secrets.allowed_hosts(names)
        with restricted_to(hosts, names) as restriction:
            try:
                async with asyncio.timeout(limit):
                    return await step_type.run(parsed, context)
            except SecretHostNotAllowed as refused:
                raise _not_allowed(refused) from None
            except StepError:
                if restriction.refused is not None:
                    raise _not_allowed(restriction.refused) from None
                raise
            except Exception:
                if restriction.refused is not None:
                    raise _not_allowed(restriction.refused) from None
                raise

    def _redact(self, value: Any) -> Any:
        return value if self.secrets is None else self.secrets.redact(value)

    def _count_run(self) -> None:
        """Each run of a step or item counts towards MAX_STEP_RUNS_PER_EXECUTION."""
        limit = self.runtime.settings.max_step_runs_per_execution
        self.step_runs += 1
        if self.step_runs > limit:
            raise StepError(
                f"the execution ran more than {limit} steps and items", code="too_many_step_runs"
            )


@dataclass(frozen=True)
class _RetryPolicy:
    max_attempts: int
    exponential: bool
    delay_seconds: float
    on: frozenset[str] | None  # error codes that are retried (None: retryable errors)

    @classmethod
    def of(cls, spec: dict[str, Any] | None, settings: Any) -> _RetryPolicy:
        if spec is None:
            return cls(
                max_attempts=settings.execution_max_attempts,
                exponential=True,
                delay_seconds=settings.execution_backoff_ms / 1000,
                on=None,
            )
        return cls(
            max_attempts=int(spec.get("max_attempts", 1)),
            exponential=spec.get("backoff", "exponential") == "exponential",
            delay_seconds=parse_duration(spec.get("delay", "1s")).total_seconds(),
            on=frozenset(spec["on"]) if spec.get("on") else None,
        )

    def retries(self, error: StepError, attempt: int) -> bool:
        if attempt >= self.max_attempts or error.code == "too_many_step_runs":
            return False
        return error.code in self.on if self.on is not None else error.retryable

    def delay(self, attempt: int) -> float:
        factor = 2 ** (attempt - 1) if self.exponential else 1
        return min(self.delay_seconds * factor, MAX_BACKOFF_SECONDS)


def _not_allowed(refused: SecretHostNotAllowed) -> StepError:
    return StepError(
        str(refused),
        code="secret_host_not_allowed",
        details={"host": refused.host, "secrets": list(refused.names)},
    )


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise StepError(
        f"`when` must render to true or false, not {json.dumps(value)[:80]}",
        code="when_not_boolean",
    )


def _checked_output(output: Any) -> Any:
    try:
        encoded = json.dumps(output)
    except (TypeError, ValueError) as exc:
        raise StepError("the step's output is not JSON", code="invalid_output") from exc
    if len(encoded) > MAX_OUTPUT_BYTES:
        raise StepError(
            f"the step's output is larger than {MAX_OUTPUT_BYTES} bytes", code="output_too_large"
        )
    return output


def _timeout_of(step: Mapping[str, Any]) -> float | None:
    """The step's `timeout` in seconds (None: it has none)."""
    return parse_duration(step["timeout"]).total_seconds() if step.get("timeout") else None


def _without_io(step: Mapping[str, Any]) -> bool:
    """Whether the step's type does no I/O (`transform`): running it again after a crash does
    nothing twice, so its start need not be recorded apart from its result."""
    return bool(getattr(STEP_TYPES.get(step["type"]), "without_io", False))


def _first_error(invalid: ValidationError) -> str:
    first = invalid.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))


async def _gather_all(coroutines: list[Any]) -> None:
    """Run the coroutines as tasks and wait for all; if the wait is cancelled (a hand-back, a
    cancel, the deadline), cancel them and wait until they have stopped."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


@contextlib.asynccontextmanager
async def _no_timeout() -> Any:
    yield
