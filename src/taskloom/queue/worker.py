"""A worker process's view of the queue: the bullmq Worker with Taskloom's settings, its event
handlers, a heartbeat for /health/queue, the reconciler, and graceful shutdown.

Shutdown (SIGTERM/SIGINT): stop taking jobs; let running executions finish for up to
SHUTDOWN_TIMEOUT_SECONDS; hand the rest back to the queue (another worker starts them at once,
not after the 300 s lock); close. Nothing is marked failed because of a shutdown, and every
phase fits in the budget of queue/shutdown.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from typing import Any

import structlog
from bullmq import Job, UnrecoverableError, Worker

from taskloom.executions import waker
from taskloom.executions.reconciler import Reconciler
from taskloom.executions.runner import ExecutionRunner
from taskloom.gdpr import archive
from taskloom.observability import sentry, tracing
from taskloom.observability.metrics import (
    EXECUTIONS_RUNNING,
    QUEUE_EVENTS,
    QUEUE_FAILED,
    QUEUE_LOCK_RENEWAL_FAILURES,
    QUEUE_STALLED,
    WORKER_HEARTBEAT,
)
from taskloom.queue.jobs import GDPR_QUEUE_NAME, QUEUE_NAME, WEBHOOK_QUEUE_NAME
from taskloom.queue.outage import put_back_on_database_outage
from taskloom.queue.shutdown import CLOSE_SECONDS, Deadline
from taskloom.redis import bullmq_options
from taskloom.runtime import Runtime
from taskloom.webhooks.delivery import WebhookDeliverer, dispatch_pending

log = structlog.get_logger("taskloom.queue")

HEARTBEAT_SECONDS = 5.0
# bullmq emits an "error" event with this message for each job of a lockRenewalFailed event.
LOCK_RENEWAL_ERROR = "could not renew lock for job "
# Of the shutdown's CLOSE_SECONDS after the timeout: the queues' close keeps this much for
# itself (the hand-back and the background loops get the rest), of which the last FORCE_SECONDS
# are for a forced close when the graceful one has not finished.
CLOSE_RESERVE_SECONDS = 0.5
FORCE_SECONDS = 0.2
MIN_CLOSE_SECONDS = 0.5
CANCEL_SECONDS = 5.0
# An idle worker blocks this long per poll for new jobs (bullmq's default is 5 s); a shutdown
# that starts during that wait finishes after it, so shorter is a quicker exit.
DRAIN_DELAY_SECONDS = 2
WEBHOOK_CONCURRENCY = 10  # deliveries in flight per worker process (mostly waiting on I/O)


class WorkerService:
    def __init__(self, runtime: Runtime, *, name: str | None = None) -> None:
        self.runtime = runtime
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.runner = ExecutionRunner(runtime)
        self.reconciler = Reconciler(runtime, owner=self.id)
        self.worker: Worker | None = None
        self.gdpr_worker: Worker | None = None
        self.webhook_worker: Worker | None = None
        self.deliverer = WebhookDeliverer(runtime)
        self._runs: list[asyncio.Task[Any]] = []  # the bullmq workers' loops
        self._loops: list[asyncio.Task[Any]] = []  # heartbeat, reconciler, webhook dispatch
        self._stopping = asyncio.Event()  # tells the heartbeat and the reconciler to finish
        self._started = time.time()

    async def start(self) -> None:
        s = self.runtime.settings
        await self.runner.templates.warm_up()  # the first loop template renders at once too
        worker = Worker(
            QUEUE_NAME,
            self.runner.process,
            bullmq_options(
                s,
                purpose="worker",
                autorun=False,
                concurrency=s.worker_concurrency,
                drainDelay=DRAIN_DELAY_SECONDS,
                lockDuration=s.queue_lock_duration_ms,
                stalledInterval=s.queue_stalled_interval_ms,
                maxStalledCount=s.queue_max_stalled_count,
                name=self.id,
            ),
        )
        # Without the server version the blocking wait rounds delays up to whole seconds.
        if worker.blockingRedisConnection is not None:
            await worker.blockingRedisConnection.getRedisVersion()
        self._on_events(worker)
        self.worker = worker
        self.gdpr_worker = Worker(
            GDPR_QUEUE_NAME,
            self._build_export,
            bullmq_options(
                s,
                purpose="worker-gdpr",
                autorun=False,
                concurrency=1,
                drainDelay=DRAIN_DELAY_SECONDS,
                lockDuration=s.queue_lock_duration_ms,
                stalledInterval=s.queue_stalled_interval_ms,
                name=f"{self.id}:gdpr",
            ),
        )
        self.webhook_worker = Worker(
            WEBHOOK_QUEUE_NAME,
            self.deliverer.process,
            bullmq_options(
                s,
                purpose="worker-webhooks",
                autorun=False,
                concurrency=WEBHOOK_CONCURRENCY,
                drainDelay=DRAIN_DELAY_SECONDS,
                # An attempt is bounded by WEBHOOK_TIMEOUT_SECONDS; the lock outlives it.
                lockDuration=max(60_000, int(s.webhook_timeout_seconds * 4_000)),
                name=f"{self.id}:webhooks",
            ),
        )
        self._runs = [
            asyncio.create_task(worker.run(), name="bullmq-worker"),
            asyncio.create_task(self.gdpr_worker.run(), name="bullmq-gdpr-worker"),
            asyncio.create_task(self.webhook_worker.run(), name="bullmq-webhook-worker"),
        ]
        self._loops = [
            asyncio.create_task(self._heartbeat(), name="worker-heartbeat"),
            asyncio.create_task(self.reconciler.run_forever(self._stopping), name="reconciler"),
            asyncio.create_task(waker.run_forever(self.runtime, self._stopping), name="waker"),
            asyncio.create_task(self._dispatch_webhooks(), name="webhook-dispatch"),
        ]
        log.info(
            "worker_started",
            worker=self.id,
            concurrency=s.worker_concurrency,
            lock_duration_ms=s.queue_lock_duration_ms,
            stalled_interval_ms=s.queue_stalled_interval_ms,
            max_stalled_count=s.queue_max_stalled_count,
            prefix=s.bullmq_prefix,
        )

    async def shutdown(self) -> None:
        """Graceful stop, within SHUTDOWN_TIMEOUT_SECONDS + CLOSE_SECONDS (queue/shutdown.py);
        returns when the worker's connections are closed or that budget is spent."""
        worker = self.worker
        if worker is None:
            return
        timeout = self.runtime.settings.shutdown_timeout_seconds
        deadline = Deadline.after(timeout + CLOSE_SECONDS)
        running = len(self.runner.active)
        log.info("worker_stopping", worker=self.id, running=running, timeout_s=timeout)
        # Heartbeat, reconciler, dispatcher: told to stop; a tick in progress ends meanwhile.
        self._stopping.set()
        others = [w for w in (self.gdpr_worker, self.webhook_worker) if w is not None]
        await self._deregister(deadline)  # admit no more work for this worker's slots
        for each in (worker, *others):
            await each.pause(do_not_wait_active=True)  # stop taking jobs
        log.info("worker_paused", worker=self.id)
        # Exports and webhook deliveries get the same time as executions to finish, then their
        # close is forced (an export is rebuilt after its lock, a delivery retried). An idle
        # queue's close takes milliseconds: a very short timeout does not force it.
        jobs_until = Deadline.after(max(timeout, MIN_CLOSE_SECONDS))
        closing = [asyncio.ensure_future(self._close(w, jobs_until)) for w in others]
        finished = await self._wait_for_active(min(timeout, deadline.left()))
        # A job fetched before the pause but not yet claimed is not in `active`; it starts
        # during the close below. Hand it back at once rather than run it past the timeout.
        self.runner.handing_back = True
        if not finished:
            handed = self.runner.hand_back_all()
            QUEUE_EVENTS.labels("handed_back").inc(handed)
            log.warning("handing_back", jobs=handed)
            await self._wait_for_active(deadline.left(keep=CLOSE_RESERVE_SECONDS))
        await self._finish(self._loops, deadline.left(keep=CLOSE_RESERVE_SECONDS))
        await asyncio.gather(self._close(worker, deadline), self._forget(deadline), *closing)
        if self.runner.releasing:  # slots being freed by the last jobs (one Redis call each)
            await asyncio.wait(set(self.runner.releasing), timeout=max(deadline.left(), 0.1))
        log.info("worker_closed", worker=self.id)
        await self._cancel(self._runs, deadline.left())
        with contextlib.suppress(TimeoutError):  # render processes are killed; reaping may lag
            async with asyncio.timeout(deadline.left()):
                await self.runner.templates.aclose()
        log.info("worker_stopped", worker=self.id, overran=deadline.left() == 0)

    async def _forget(self, deadline: Deadline) -> None:
        """This worker's heartbeat, its slots in the fair scheduler (again: a heartbeat tick may
        have registered them since) and reconciler leadership, gone at once (all would expire
        on their own: a slow Redis does not hold up the exit)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(deadline.left()):
                await self.runtime.redis.delete(self._heartbeat_key)
                await self.runtime.queue.deregister_worker(worker=self.id)
                await self.reconciler.release()

    async def _deregister(self, deadline: Deadline) -> None:
        try:
            async with asyncio.timeout(deadline.left(keep=CLOSE_RESERVE_SECONDS)):
                await self.runtime.queue.deregister_worker(worker=self.id)
        except Exception:  # Redis down or slow: the registration expires on its own
            log.warning("worker_deregister_failed", exc_info=True)

    @staticmethod
    async def _close(worker: Worker, deadline: Deadline) -> None:
        """`Worker.close()` waits for its fetch and its jobs and shields itself from
        cancellation, so `wait_for` cannot bound it: wait while the budget allows, then force
        it (running jobs are cancelled, connections dropped without waiting)."""
        closing = asyncio.ensure_future(worker.close())
        done, _ = await asyncio.wait({closing}, timeout=deadline.left(keep=FORCE_SECONDS))
        if done:
            return
        log.warning("worker_close_timed_out", queue=worker.name)
        forced = asyncio.ensure_future(worker.close(force=True))
        _, pending = await asyncio.wait({closing, forced}, timeout=max(deadline.left(), 0.1))
        if pending:
            log.error("worker_close_abandoned", queue=worker.name)

    async def _wait_for_active(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.runner.idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[Any]], seconds: float = CANCEL_SECONDS) -> None:
        """Cancel background tasks; one stuck in a call that ignores cancellation does not hold
        up the shutdown for more than `seconds`."""
        for task in tasks:
            task.cancel()
        # A moment at least, for the cancellations to be delivered.
        timeout = max(seconds, 0.05)
        _, stuck = await asyncio.wait(tasks, timeout=timeout) if tasks else (set(), set())
        if stuck:
            log.warning("tasks_not_cancelled", tasks=sorted(t.get_name() for t in stuck))

    async def _finish(self, tasks: list[asyncio.Task[Any]], seconds: float) -> None:
        """Wait for tasks that were told to stop; cancel the ones that do not in time."""
        _, late = await asyncio.wait(tasks, timeout=seconds) if tasks else (set(), set())
        await self._cancel(list(late), min(CANCEL_SECONDS, seconds))

    async def _dispatch_webhooks(self) -> None:
        """Move new webhook events from the outbox to the queue, every few moments."""
        interval = self.runtime.settings.webhook_dispatch_interval_seconds
        while not self._stopping.is_set():
            try:
                await dispatch_pending(self.runtime)
            except asyncio.CancelledError:
                raise
            except Exception:  # PostgreSQL or Redis down: the rows wait for the next tick
                log.exception("webhook_dispatch_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def _build_export(self, job: Job, token: str) -> None:
        with tracing.job_span(GDPR_QUEUE_NAME, job.id):
            async with put_back_on_database_outage(job, token, queue=GDPR_QUEUE_NAME):
                await archive.build(self.runtime, uuid.UUID(job.data["request_id"]))

    # --- heartbeat -----------------------------------------------------------------------------

    @property
    def _heartbeat_key(self) -> str:
        return self.runtime.keys("workers", self.id)

    async def _heartbeat(self) -> None:
        """A key per live worker for /health/queue (CLIENT LIST would need an ACL right), and its
        slots registered with the fair scheduler."""
        while not self._stopping.is_set():
            try:
                body = {
                    "id": self.id,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "concurrency": self.runtime.settings.worker_concurrency,
                    "running": len(self.runner.active),
                    "started_at": int(self._started),
                }
                EXECUTIONS_RUNNING.set(len(self.runner.active))
                WORKER_HEARTBEAT.labels(QUEUE_NAME).set(time.time())
                await self.runtime.redis.set(
                    self._heartbeat_key, json.dumps(body), ex=int(HEARTBEAT_SECONDS * 3)
                )
                # The fair scheduler admits work for live workers' slots only (queue/fairness).
                await self.runtime.queue.register_worker(
                    worker=self.id,
                    slots=self.runtime.settings.worker_concurrency,
                    ttl_seconds=HEARTBEAT_SECONDS * 3,
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HEARTBEAT_SECONDS)

    # --- events --------------------------------------------------------------------------------

    def _on_events(self, worker: Worker) -> None:
        def completed(job: Job, result: Any) -> None:
            QUEUE_EVENTS.labels("completed").inc()
            self.runner.release_slot(job)

        def failed(job: Job, error: BaseException) -> None:
            QUEUE_FAILED.inc()
            final = isinstance(error, UnrecoverableError) or job.attemptsMade >= int(
                job.opts.get("attempts", 1)
            )
            log.warning(
                "job_failed",
                job_id=job.id,
                execution_id=job.data.get("execution_id"),
                org_id=job.data.get("org_id"),
                attempt=job.attemptsMade,
                final=final,
                error=str(error)[:500],
            )
            if final:  # otherwise it comes back after its backoff, keeping its slot
                self.runner.release_slot(job)

        def stalled(job_id: str, *_: Any) -> None:
            QUEUE_STALLED.inc()
            log.warning("job_stalled", job_id=job_id, execution_id=job_id)

        def lock_renewal_failed(job_ids: list[str], *_: Any) -> None:
            # bullmq renews the locks it tracks in one round trip; a job that finished (or was
            # handed back) meanwhile has no lock left to renew and is reported too. Only a job
            # this worker is still running has really lost its lock (another worker may take it).
            lost = [j for j in job_ids if self.runner.is_running(j)]
            if lost:
                QUEUE_LOCK_RENEWAL_FAILURES.inc(len(lost))
                log.error("lock_renewal_failed", job_ids=lost)
            if finished := [j for j in job_ids if j not in lost]:
                log.debug("lock_renewal_after_finish", job_ids=finished)

        def error(err: BaseException, job: Job | None = None, *_: Any) -> None:
            if str(err).startswith(LOCK_RENEWAL_ERROR):
                return  # bullmq's duplicate of lockRenewalFailed, handled above
            QUEUE_EVENTS.labels("error").inc()
            log.error("worker_error", error=repr(err), job_id=job.id if job else None)
            sentry.capture(err, job_id=job.id if job else None)

        worker.on("completed", completed)
        worker.on("failed", failed)
        worker.on("stalled", stalled)
        worker.on("lockRenewalFailed", lock_renewal_failed)
        worker.on("error", error)


async def live_workers(runtime: Runtime) -> list[dict[str, Any]]:
    """The heartbeats of workers seen in the last few seconds."""
    workers = []
    async for key in runtime.redis.scan_iter(match=runtime.keys.match("workers"), count=200):
        raw = await runtime.redis.get(key)
        if raw:
            workers.append(json.loads(raw))
    return sorted(workers, key=lambda w: str(w.get("id")))
