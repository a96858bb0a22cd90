"""The BullMQ processor of the `orchestration` queue: runs (or resumes) one execution.

Outcomes, as BullMQ sees them:
- returns: the execution finished (succeeded, cancelled, or it was already finished/deleted);
- raises UnrecoverableError: a step failed for good (recorded on the step and the execution);
  its message, BullMQ's `failedReason`, is `<step id>: <error code>`, nothing more (retries
  happen inside the step's task, by its policy: executions/engine.py);
- raises DelayedError after `moveToDelayed`: handed back on shutdown, put back while
  PostgreSQL is unreachable (queue/outage.py), or deferred by the per-org cap (which the fair
  scheduler already keeps: a last line of defence); none counts as an attempt or fails it.

A job that completed or failed for good frees its organization's slot in the fair scheduler
(queue/fairness.py, `job_done`), which admits the next execution round-robin; its job is
added in the same breath.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from bullmq import DelayedError, Job, UnrecoverableError
from opentelemetry.trace import SpanKind
from redis.exceptions import RedisError

from taskloom.config import Settings
from taskloom.executions import inline, state
from taskloom.executions.engine import Engine
from taskloom.executions.queue import QUEUE, QUEUE_NAME, ExecutionQueue
from taskloom.executions.state import Claim, Run
from taskloom.executions.template_process import TemplateRenderer
from taskloom.observability import tracing
from taskloom.observability.metrics import EXECUTIONS_RUNNING, QUEUE_EVENTS, QUEUE_JOB_DURATION
from taskloom.observability.request_id import bound_request_id
from taskloom.queue.host import JobType
from taskloom.queue.outage import put_back_on_database_outage
from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.queue")

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
    engines: dict[uuid.UUID, Engine] = field(default_factory=dict)  # running executions
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while nothing runs
    templates: TemplateRenderer = field(init=False)
    # The inline definitions this worker knows (executions/inline.py, ADR 0018).
    inline_definitions: inline.Definitions = field(default_factory=inline.Definitions)
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
        # Without tracing configured, no span at all: the no-op one cost the worker 1-2.5 %.
        span = (
            contextlib.nullcontext()
            if not tracing.enabled()
            else tracing.tracer().start_as_current_span(
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
        )
        with span, bound_request_id(job.data.get("request_id")):
            try:
                async with put_back_on_database_outage(job, token, queue=QUEUE_NAME):
                    return await self._process(job, token, execution_id, org_id)
            finally:
                QUEUE_JOB_DURATION.labels(QUEUE_NAME).observe(time.perf_counter() - started)
                structlog.contextvars.unbind_contextvars("job_id", "execution_id", "org_id")

    def job_done(self, job: Job) -> None:
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
                await ExecutionQueue(self.runtime).finished_many(batch)
            except Exception as error:  # Redis down: the reconciler frees the slots later
                log.warning("slot_release_failed", executions=len(batch), error=repr(error))

    async def _process(
        self, job: Job, token: str, execution_id: uuid.UUID, org_id: uuid.UUID
    ) -> Any:
        data = job.data
        if not self.handing_back and await self._run_inline(job):
            return {"succeeded": True}
        await inline.forget_input(job)  # not run inline: a carried input leaves Redis now
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
        self.inline_definitions.learn(data, run)
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
            self.engines.pop(run.execution_id, None)
            self.active.pop(job.id, None)
            if not self.active:
                self.idle.set()

    async def _run_inline(self, job: Job) -> bool:
        """Run an inline execution (executions/inline.py) from its job's data and finish it in
        one call, if this worker knows its definition and the row is still as the job says."""
        found = self.inline_definitions.unclaimed_run(job.data)
        if found is None:
            return False
        run, definition_text = found

        async def progressed() -> None:  # the one step's end is the execution's
            return None

        engine = Engine(self.runtime, self.templates, run, on_progress=progressed)
        if not await engine.run_inline(definition_text):
            return False
        log.debug("execution_run_inline")
        return True

    async def _run(self, run: Run, job: Job) -> Any:
        """Run the execution's graph (executions/engine.py); a failure for good is BullMQ's
        failure too, its reason `<step id>: <error code>` and nothing more (the execution row
        has the message, and erasure clears it)."""

        async def progressed() -> None:
            await _forget_stalls(job)

        engine = Engine(self.runtime, self.templates, run, on_progress=progressed)
        self.engines[run.execution_id] = engine  # until _process is done (a hand-back reads it)
        finished = await engine.execute()
        if finished.status != "waiting" and run.parent_execution_id is not None:
            await self._wake_parent(run)
        if finished.status == "failed":
            raise UnrecoverableError(f"{finished.step_id or 'execution'}: {finished.code}")
        return {finished.status: True}

    async def _wake_parent(self, run: Run) -> None:
        """A child execution ended: its parent, if it waits for it, goes back to the queue (if
        this fails, the reconciler's scan of waiting parents wakes it)."""
        try:
            if await state.wake_parent(self.runtime.database, run):
                assert run.parent_execution_id is not None
                await ExecutionQueue(self.runtime).resubmit(
                    execution_id=run.parent_execution_id, org_id=run.org_id
                )
        except Exception as error:  # PostgreSQL or Redis blinked: the waker retries
            log.warning("parent_wake_failed", error=repr(error))

    async def _hand_back(self, run: Run, job: Job, token: str) -> None:
        """Shutdown timed out mid-execution: leave the finished steps, reset the interrupted ones
        and give the job back to the queue now, so another worker starts at once instead of
        after the 300 s lock expires."""
        engine = self.engines.pop(run.execution_id, None)
        running = set(engine.running) if engine is not None else set()
        await state.interrupted(self.runtime.database, run, running)
        await state.back_to_queue(self.runtime.database, run)
        await self._delay(job, token, 0)
        log.warning("job_handed_back", steps=sorted(s for s, _ in running))

    @staticmethod
    async def _delay(job: Job, token: str, delay_ms: int) -> None:
        await job.moveToDelayed(int(time.time() * 1000) + delay_ms, token)

    # --- what the worker host asks of a drainable processor (queue/host.py) -------------------

    def running(self) -> int:
        return len(self.active)

    def stop_taking(self) -> None:
        self.handing_back = True

    async def warm_up(self) -> None:
        await self.templates.warm_up()  # the first loop template renders at once too

    async def beat(self, *, worker: str, ttl_seconds: float) -> None:
        """The fair scheduler admits work for live workers' slots only (queue/fairness.py)."""
        EXECUTIONS_RUNNING.set(len(self.active))
        await ExecutionQueue(self.runtime).register_worker(
            worker=worker, slots=self.runtime.settings.worker_concurrency, ttl_seconds=ttl_seconds
        )

    async def leave(self, *, worker: str) -> None:
        await ExecutionQueue(self.runtime).deregister_worker(worker=worker)

    async def settle(self, seconds: float) -> None:
        """Slots being freed by the last jobs (one Redis call each)."""
        if self.releasing:
            await asyncio.wait(set(self.releasing), timeout=seconds)

    async def aclose(self) -> None:
        await self.templates.aclose()  # render processes are killed

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


def _worker_options(settings: Settings) -> dict[str, Any]:
    return {
        "concurrency": settings.worker_concurrency,
        "lockDuration": settings.queue_lock_duration_ms,
        "stalledInterval": settings.queue_stalled_interval_ms,
        "maxStalledCount": settings.queue_max_stalled_count,
    }


JOB_TYPE = JobType(
    queue=QUEUE, processor=ExecutionRunner, worker_purpose="worker", worker_options=_worker_options
)
