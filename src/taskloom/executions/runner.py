"""The BullMQ processor of the `orchestration` queue: runs (or resumes) one execution.

Outcomes, as BullMQ sees them:
- returns: the execution finished (succeeded, cancelled, or it was already finished/deleted);
- raises UnrecoverableError: a step failed for good (recorded on the step and the execution);
- raises AttemptFailed: a retryable failure with attempts left (BullMQ backs off, retries);
  either one's message, BullMQ's `failedReason`, is `<step id>: <error code>`, nothing more;
- raises DelayedError after `moveToDelayed`: handed back on shutdown, put back while
  PostgreSQL is unreachable (queue/outage.py), or deferred by the per-org cap (which the fair
  scheduler already keeps: a last line of defence); none counts as an attempt or fails it.

A job that completed or failed for good frees its organization's slot in the fair scheduler
(queue/fairness.py, `release_slot`), which admits the next execution round-robin; its job is
added in the same breath.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from bullmq import DelayedError, Job, UnrecoverableError
from opentelemetry.trace import SpanKind
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from taskloom.executions import state
from taskloom.executions.models import ExecutionStatus
from taskloom.executions.state import Claim, Run
from taskloom.executions.steps import STEP_TYPES, RetryableStepError, StepContext, StepError
from taskloom.executions.template_process import TemplateRenderer
from taskloom.executions.templating import TemplateProblem
from taskloom.observability import sentry, tracing
from taskloom.observability.metrics import QUEUE_EVENTS, QUEUE_JOB_DURATION
from taskloom.observability.request_id import bound_request_id
from taskloom.queue.jobs import QUEUE_NAME
from taskloom.queue.outage import put_back_on_database_outage
from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.queue")

MAX_OUTPUT_BYTES = 1_048_576
DEFER_MS = 1_000  # re-check a capped organization's job after about this long
RELEASE_GATHER_SECONDS = 0.002  # jobs ending within this are released together

# BullMQ counts a job's stalls in the `stc` field of its hash and fails the job past
# QUEUE_MAX_STALLED_COUNT. Taskloom resets it when a step finishes, so the limit counts stalls in
# a row without progress: a step that crashes every worker still fails, an execution that merely
# met several killed workers does not. Only while the job exists (never recreate a removed one).
_FORGET_STALLS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'stc', 0)
  return 1
end
return 0
"""


class AttemptFailed(Exception):
    """A step failed with attempts left: BullMQ backs off and runs the job again."""


@dataclass
class _Active:
    job: Job
    token: str
    task: asyncio.Task[Any]


@dataclass
class ExecutionRunner:
    runtime: Runtime
    handing_back: bool = False
    active: dict[str, _Active] = field(default_factory=dict)
    current_step: dict[uuid.UUID, str] = field(default_factory=dict)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while nothing runs
    templates: TemplateRenderer = field(init=False)
    to_release: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)  # (org, exec)
    releasing: set[asyncio.Task[None]] = field(default_factory=set)  # the task freeing them

    def __post_init__(self) -> None:
        self.idle.set()
        self.templates = TemplateRenderer.from_settings(self.runtime.settings)

    async def process(self, job: Job, token: str) -> Any:
        """The processor handed to bullmq. The execution runs in its own task so a shutdown can
        interrupt it and hand the job back without cancelling bullmq's bookkeeping."""
        execution_id, org_id = uuid.UUID(job.data["execution_id"]), uuid.UUID(job.data["org_id"])
        structlog.contextvars.bind_contextvars(
            job_id=job.id, execution_id=str(execution_id), org_id=str(org_id)
        )
        started = time.perf_counter()
        span = tracing.tracer().start_as_current_span(
            f"job {QUEUE_NAME}",
            context=tracing.context_from(job.data.get("trace")),
            kind=SpanKind.CONSUMER,
            attributes={
                **tracing.messaging_attributes(
                    queue=QUEUE_NAME, job_id=job.id, operation="process"
                ),
                "taskloom.execution_id": str(execution_id),
                "taskloom.org_id": str(org_id),
            },
        )
        with span, bound_request_id(job.data.get("request_id")):
            try:
                async with put_back_on_database_outage(job, token, queue=QUEUE_NAME):
                    return await self._process(job, token, execution_id, org_id)
            finally:
                QUEUE_JOB_DURATION.labels(QUEUE_NAME).observe(time.perf_counter() - started)
                structlog.contextvars.unbind_contextvars("job_id", "execution_id", "org_id")

    def release_slot(self, job: Job) -> None:
        """The job completed or failed for good (bullmq's events, sent once the job has left
        `active`): free its organization's slot in the fair scheduler, which admits the next
        execution, and add that one's job. Freed only now, so an organization never has more
        than its cap of jobs on the workers, even for the moment a job takes to be completed.
        A retry's backoff, a hand-back or a database outage keep the slot: the job comes back.
        A release lost with its worker is made by the reconciler."""
        self.to_release.append((uuid.UUID(job.data["org_id"]), uuid.UUID(job.data["execution_id"])))
        if not self.releasing:
            task = asyncio.ensure_future(self._release())
            self.releasing.add(task)
            task.add_done_callback(self.releasing.discard)

    async def _release(self) -> None:
        """Free the slots of the jobs that ended a moment ago together: one script call and one
        `addBulk` for all of them (bullmq's Python `add` costs the worker about 0.3 ms of CPU a
        job, `addBulk` a quarter of that), so the worker, the bottleneck, pays little for the
        jobs it now adds."""
        while self.to_release:
            await asyncio.sleep(RELEASE_GATHER_SECONDS)
            batch, self.to_release = self.to_release, []
            try:
                await self.runtime.queue.finished_many(batch)
            except Exception as error:  # Redis down: the reconciler frees the slots later
                log.warning("slot_release_failed", executions=len(batch), error=repr(error))

    async def _process(
        self, job: Job, token: str, execution_id: uuid.UUID, org_id: uuid.UUID
    ) -> Any:
        claim, run = await state.claim(
            self.runtime.database,
            execution_id=execution_id,
            org_id=org_id,
            max_running=self.runtime.settings.max_running_per_org,
        )
        if claim is Claim.DEFER:  # the fair scheduler admits within the cap: a last defence
            QUEUE_EVENTS.labels("deferred").inc()
            log.warning("execution_deferred", max_running=self.runtime.settings.max_running_per_org)
            await self._delay(job, token, DEFER_MS + random.randint(0, DEFER_MS // 2))
            raise DelayedError()
        if run is None:
            log.info("execution_not_run", reason=claim.value)
            return {"skipped": claim.value}
        if self.handing_back:  # fetched just before the shutdown began
            await self._hand_back(run, job, token)
            raise DelayedError()
        task = asyncio.ensure_future(self._run(run, job))
        self.active[job.id] = _Active(job=job, token=token, task=task)
        self.idle.clear()
        try:
            return await task
        except asyncio.CancelledError:
            if not self.handing_back or not task.cancelled():
                raise
            await self._hand_back(run, job, token)
            raise DelayedError() from None
        finally:
            self.active.pop(job.id, None)
            if not self.active:
                self.idle.set()

    async def _run(self, run: Run, job: Job) -> Any:
        database = self.runtime.database
        scope: dict[str, Any] = {
            "input": run.input,
            "steps": {sid: {"output": out} for sid, out in run.done.items()},
        }
        steps = run.definition.get("steps", [])
        pending = [(i, step) for i, step in enumerate(steps) if step["id"] not in run.done]
        if not pending:  # every step had succeeded before an interruption
            output = run.done.get(steps[-1]["id"]) if steps else None
            await state.finish(database, run, ExecutionStatus.SUCCEEDED, output=output)
            return {"succeeded": True}
        for number, (position, step) in enumerate(pending):
            # The claim just checked for a cancel request; later steps check again.
            if number and await state.cancel_requested(database, run):
                await state.finish(database, run, ExecutionStatus.CANCELLED)
                log.info("execution_cancelled", step_id=step["id"])
                return {"cancelled": True}
            self.current_step[run.execution_id] = step["id"]
            last = number == len(pending) - 1
            output = await self._run_step(
                run, job, position, step, scope, last=last, first=number == 0
            )
            # Its success is committed: a hand-back before the next step starts (e.g. during
            # the cancel check) must not mark it pending, or it would run again.
            self.current_step.pop(run.execution_id, None)
            scope["steps"][step["id"]] = {"output": output}
            await _forget_stalls(job)
        self.current_step.pop(run.execution_id, None)
        return {"succeeded": True}

    async def _run_step(
        self,
        run: Run,
        job: Job,
        position: int,
        step: dict[str, Any],
        scope: dict[str, Any],
        *,
        last: bool,
        first: bool,
    ) -> Any:
        database, step_id = self.runtime.database, step["id"]
        step_type = STEP_TYPES.get(step["type"])
        if first and run.first_attempt is not None:
            attempt = run.first_attempt  # the claim already marked it running
        else:
            attempt = await state.start_step(
                database, run, step_id=step_id, position=position, type_=step["type"]
            )
        step_span = tracing.tracer().start_as_current_span(
            f"step {step['type']}", attributes={"taskloom.step_id": step_id}
        )
        with step_span:
            return await self._run_step_in_span(
                run, job, step, step_type, scope, attempt=attempt, last=last
            )

    async def _run_step_in_span(
        self,
        run: Run,
        job: Job,
        step: dict[str, Any],
        step_type: Any,
        scope: dict[str, Any],
        *,
        attempt: int,
        last: bool,
    ) -> Any:
        database, step_id = self.runtime.database, step["id"]
        args: Any = None
        try:
            if step_type is None:
                raise StepError(f"unknown step type {step['type']!r}", code="unknown_step_type")
            try:
                args = await self.templates.render(
                    step.get("args", {}), scope, path=f"steps.{step_id}.args"
                )
                parsed = step_type.Args.model_validate(args)
            except TemplateProblem as problem:  # template_error or template_too_expensive
                raise StepError(str(problem), code=problem.code) from problem
            except ValidationError as invalid:
                raise StepError(
                    f"steps.{step_id}.args: {_first_error(invalid)}", code="invalid_args"
                ) from invalid
            context = StepContext(
                settings=self.runtime.settings,
                org_id=run.org_id,
                execution_id=run.execution_id,
                step_id=step_id,
                attempt=attempt,
                triggered_by=run.triggered_by,
                runtime=self.runtime,
            )
            output = _checked_output(await step_type.run(parsed, context))
        except StepError as error:
            raise await self._step_failed(run, job, step_id, error, args) from error
        except (OSError, TimeoutError, DBAPIError, RedisError) as error:
            # Infrastructure blinked (database, Redis, network): worth a retry.
            log.warning("step_infrastructure_error", step_id=step_id, error=repr(error))
            retry = RetryableStepError(f"internal error ({type(error).__name__})", code="internal")
            raise await self._step_failed(run, job, step_id, retry, args) from error
        except Exception as error:  # a bug: fail the step visibly rather than retry blindly
            log.exception("step_crashed", step_id=step_id)
            sentry.capture(error, execution_id=run.execution_id, step_id=step_id)
            crash = StepError(f"internal error ({type(error).__name__})", code="internal_error")
            raise await self._step_failed(run, job, step_id, crash, args) from error
        await state.step_succeeded(
            database, run, step_id=step_id, args=args, output=output, last=last
        )
        log.info("step_succeeded", step_id=step_id, attempt=attempt)
        return output

    async def _step_failed(
        self, run: Run, job: Job, step_id: str, error: StepError, args: Any
    ) -> Exception:
        """Record the failed attempt; return what to raise to bullmq (final: Unrecoverable)."""
        database = self.runtime.database
        attempts = int(job.opts.get("attempts", 1))
        final = not error.retryable or job.attemptsMade + 1 >= attempts
        detail = {**error.as_json(), "step_id": step_id, "attempt": job.attemptsMade + 1}
        await state.step_failed(
            database, run, step_id=step_id, error=detail, final=final, args=args
        )
        log.warning("step_failed", step_id=step_id, final=final, code=error.code)
        # BullMQ keeps the reason with the failed job for days: the step id and the error's
        # code only, never its message (which may quote a person's input); the execution row
        # has the message (and erasure clears it).
        reason = f"{step_id}: {error.code}"
        if final:
            await state.finish(database, run, ExecutionStatus.FAILED, error=detail)
            failure: Exception = UnrecoverableError(reason)
            return failure
        await state.back_to_queue(database, run, error={**detail, "retrying": True})
        return AttemptFailed(reason)

    async def _hand_back(self, run: Run, job: Job, token: str) -> None:
        """Shutdown timed out mid-execution: leave the finished steps, reset the interrupted one
        and give the job back to the queue now, so another worker starts at once instead of
        after the 300 s lock expires."""
        step_id = self.current_step.pop(run.execution_id, None)
        if step_id is not None:
            await state.step_interrupted(self.runtime.database, run, step_id=step_id)
        await state.back_to_queue(self.runtime.database, run)
        await self._delay(job, token, 0)
        log.warning("job_handed_back", step_id=step_id)

    @staticmethod
    async def _delay(job: Job, token: str, delay_ms: int) -> None:
        await job.moveToDelayed(int(time.time() * 1000) + delay_ms, token)

    def is_running(self, job_id: str) -> bool:
        """Whether this runner is still running the job (and not handing it back)."""
        return job_id in self.active and not self.handing_back

    def hand_back_all(self) -> int:
        """Interrupt every running execution; each processor then hands its job back."""
        self.handing_back = True
        for active in self.active.values():
            active.task.cancel()
        return len(self.active)


async def _forget_stalls(job: Job) -> None:
    """A step finished: earlier stalls no longer count against this job (see _FORGET_STALLS).
    Free when the job never stalled, which is nearly always."""
    if not job.stalledCounter:
        return
    try:
        await job.backend.conn.eval(_FORGET_STALLS, 1, job.backend.toKey(job.id))
    except RedisError as error:  # the count stays; the execution itself is not affected
        log.warning("stall_count_reset_failed", error=repr(error))
        return
    log.info("stall_count_reset", stalls=job.stalledCounter)
    job.stalledCounter = 0


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


def _first_error(invalid: ValidationError) -> str:
    first = invalid.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
