"""A worker process: one bullmq Worker per job type the domains declare (queue/host.py), their
event handlers, a heartbeat for /health/queue, the domains' periodic upkeep, and graceful
shutdown. It imports no domain: `taskloom/jobs.py` hands it the lists.

Shutdown (SIGTERM/SIGINT): stop taking jobs; let running jobs finish for up to
SHUTDOWN_TIMEOUT_SECONDS; hand the rest of a drainable processor's (executions) back to the
queue (another worker starts them at once, not after the 300 s lock); close. Nothing is marked
failed because of a shutdown, and every phase fits in the budget of queue/shutdown.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from bullmq import Job, UnrecoverableError, Worker

from taskloom.observability import sentry
from taskloom.observability.metrics import (
    QUEUE_EVENTS,
    QUEUE_FAILED,
    QUEUE_LOCK_RENEWAL_FAILURES,
    QUEUE_STALLED,
    WORKER_HEARTBEAT,
)
from taskloom.queue.fetching import FetchingWorker
from taskloom.queue.host import Drainable, JobType, Processor, Upkeep
from taskloom.queue.shutdown import CLOSE_SECONDS, Deadline
from taskloom.queue.upkeep import Upkeeps
from taskloom.redis import bullmq_options
from taskloom.runtime import Runtime

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


class _Plugged:
    """One job type in this process: its processor and its bullmq Worker."""

    def __init__(self, job_type: JobType, processor: Processor) -> None:
        self.type = job_type
        self.processor = processor
        self.worker: Worker | None = None

    @property
    def drainable(self) -> Drainable | None:
        return self.processor if isinstance(self.processor, Drainable) else None


class WorkerService:
    def __init__(
        self,
        runtime: Runtime,
        *,
        job_types: Sequence[JobType],
        upkeeps: Sequence[Upkeep] = (),
        name: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.plugged = [_Plugged(t, t.processor(runtime)) for t in job_types]
        self.upkeeps = Upkeeps(runtime, upkeeps, owner=self.id)
        self._runs: list[asyncio.Task[Any]] = []  # the bullmq workers' loops
        self._loops: list[asyncio.Task[Any]] = []  # heartbeat, upkeep
        self._stopping = asyncio.Event()  # tells the heartbeat and the upkeep loops to finish
        self._started = time.time()

    @property
    def workers(self) -> dict[str, Worker]:
        """The bullmq Workers once started, by queue name."""
        return {p.type.queue.name: p.worker for p in self.plugged if p.worker is not None}

    @property
    def _drainables(self) -> list[Drainable]:
        return [d for p in self.plugged if (d := p.drainable) is not None]

    def _running(self) -> int:
        return sum(d.running() for d in self._drainables)

    def _concurrency(self) -> int:
        return sum(
            int(p.type.worker_options(self.runtime.settings).get("concurrency", 1))
            for p in self.plugged
            if p.drainable is not None
        )

    async def start(self) -> None:
        s = self.runtime.settings
        for drainable in self._drainables:
            await drainable.warm_up()  # e.g. the first loop template renders at once too
        for plugged in self.plugged:
            job_type = plugged.type
            worker = FetchingWorker(
                job_type.queue.name,
                plugged.processor.process,
                bullmq_options(
                    s,
                    purpose=job_type.worker_purpose,
                    autorun=False,
                    drainDelay=DRAIN_DELAY_SECONDS,
                    **job_type.worker_options(s),
                    name=f"{self.id}{job_type.name_suffix}",
                ),
            )
            if (drained := plugged.drainable) is not None:
                # Without the server version the blocking wait rounds delays up to whole
                # seconds (delays matter to hand-backs and retries).
                if worker.blockingRedisConnection is not None:
                    await worker.blockingRedisConnection.getRedisVersion()
                self._on_events(worker, drained)
            plugged.worker = worker
        self._runs = [
            asyncio.create_task(p.worker.run(), name=f"bullmq-worker:{p.type.queue.name}")
            for p in self.plugged
            if p.worker is not None
        ]
        self._loops = [
            asyncio.create_task(self._heartbeat(), name="worker-heartbeat"),
            *(
                asyncio.create_task(loop, name=name)
                for name, loop in self.upkeeps.loops(self._stopping)
            ),
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
        if not self.workers:
            return
        timeout = self.runtime.settings.shutdown_timeout_seconds
        deadline = Deadline.after(timeout + CLOSE_SECONDS)
        log.info("worker_stopping", worker=self.id, running=self._running(), timeout_s=timeout)
        # Heartbeat, upkeep loops: told to stop; a tick in progress ends meanwhile.
        self._stopping.set()
        drained = [p.worker for p in self.plugged if p.drainable and p.worker is not None]
        others = [p.worker for p in self.plugged if not p.drainable and p.worker is not None]
        await self._deregister(deadline)  # admit no more work for this worker's slots
        for each in (*drained, *others):
            await each.pause(do_not_wait_active=True)  # stop taking jobs
        log.info("worker_paused", worker=self.id)
        # Other jobs (exports, webhook deliveries) get the same time as drainable ones to
        # finish, then their close is forced (an export is rebuilt after its lock, a delivery
        # retried). An idle queue's close takes milliseconds: a very short timeout does not
        # force it.
        jobs_until = Deadline.after(max(timeout, MIN_CLOSE_SECONDS))
        closing = [asyncio.ensure_future(self._close(w, jobs_until)) for w in others]
        finished = await self._wait_for_active(min(timeout, deadline.left()))
        # A job fetched before the pause but not yet claimed is not running yet; it starts
        # during the close below. Hand it back at once rather than run it past the timeout.
        for drainable in self._drainables:
            drainable.stop_taking()
        if not finished:
            handed = sum(d.hand_back_all() for d in self._drainables)
            QUEUE_EVENTS.labels("handed_back").inc(handed)
            log.warning("handing_back", jobs=handed)
            await self._wait_for_active(deadline.left(keep=CLOSE_RESERVE_SECONDS))
        await self._finish(self._loops, deadline.left(keep=CLOSE_RESERVE_SECONDS))
        await asyncio.gather(
            *(self._close(w, deadline) for w in drained), self._forget(deadline), *closing
        )
        for drainable in self._drainables:  # e.g. slots being freed by the last jobs
            await drainable.settle(max(deadline.left(), 0.1))
        log.info("worker_closed", worker=self.id)
        await self._cancel(self._runs, deadline.left())
        for drainable in self._drainables:
            with contextlib.suppress(TimeoutError):  # e.g. render processes: reaping may lag
                async with asyncio.timeout(deadline.left()):
                    await drainable.aclose()
        log.info("worker_stopped", worker=self.id, overran=deadline.left() == 0)

    async def _forget(self, deadline: Deadline) -> None:
        """This worker's heartbeat, its slots in the fair scheduler (again: a heartbeat tick may
        have registered them since) and upkeep leadership, gone at once (all would expire
        on their own: a slow Redis does not hold up the exit)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(deadline.left()):
                await self.runtime.redis.delete(self._heartbeat_key)
                for drainable in self._drainables:
                    await drainable.leave(worker=self.id)
                await self.upkeeps.release()

    async def _deregister(self, deadline: Deadline) -> None:
        try:
            async with asyncio.timeout(deadline.left(keep=CLOSE_RESERVE_SECONDS)):
                for drainable in self._drainables:
                    await drainable.leave(worker=self.id)
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

    async def _idle(self) -> None:
        """Until every drainable processor is idle at once."""
        drainables = self._drainables
        while True:
            for drainable in drainables:
                await drainable.idle.wait()
            if all(d.idle.is_set() for d in drainables):
                return

    async def _wait_for_active(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._idle(), seconds)
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

    # --- heartbeat -----------------------------------------------------------------------------

    @property
    def _heartbeat_key(self) -> str:
        return self.runtime.keys("workers", self.id)

    async def _heartbeat(self) -> None:
        """A key per live worker for /health/queue (CLIENT LIST would need an ACL right), and a
        beat to each drainable processor (which registers its slots with the fair scheduler)."""
        while not self._stopping.is_set():
            try:
                body = {
                    "id": self.id,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "concurrency": self._concurrency(),
                    "running": self._running(),
                    "started_at": int(self._started),
                }
                for plugged in self.plugged:
                    if plugged.drainable is not None:
                        WORKER_HEARTBEAT.labels(plugged.type.queue.name).set(time.time())
                await self.runtime.redis.set(
                    self._heartbeat_key, json.dumps(body), ex=int(HEARTBEAT_SECONDS * 3)
                )
                for drainable in self._drainables:
                    await drainable.beat(worker=self.id, ttl_seconds=HEARTBEAT_SECONDS * 3)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HEARTBEAT_SECONDS)

    # --- events --------------------------------------------------------------------------------

    def _on_events(self, worker: Worker, processor: Drainable) -> None:
        def completed(job: Job, result: Any) -> None:
            QUEUE_EVENTS.labels("completed").inc()
            processor.job_done(job)

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
                processor.job_done(job)

        def stalled(job_id: str, *_: Any) -> None:
            QUEUE_STALLED.inc()
            log.warning("job_stalled", job_id=job_id, execution_id=job_id)

        def lock_renewal_failed(job_ids: list[str], *_: Any) -> None:
            # bullmq renews the locks it tracks in one round trip; a job that finished (or was
            # handed back) meanwhile has no lock left to renew and is reported too. Only a job
            # this worker is still running has really lost its lock (another worker may take it).
            lost = [j for j in job_ids if processor.is_running(j)]
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
