"""bullmq's Worker, without its futile fetches, and taking the next job as it completes one.

The Python bullmq Worker keeps one task per free slot asking Redis for a job. When the queue is
empty, one of them blocks on the queue's marker and the others stop; but each time a job
arrives, every free slot asks again at once, and all but one find nothing: at a steady arrival
rate (rather than a backlog), 3.5 script calls per job at concurrency 1, 13-16 at 20 (measured,
../shared/research/python-floor.md). Here the slots ask one at a time, and once one found the
queue empty the others do not ask (they return empty-handed, and one of them waits for the
marker): one fetch answers each wake-up and takes the job; bullmq's move of the job leaves a
marker, which wakes a free slot to ask again, on and on while they find jobs: 2 fetches per job
at any concurrency (tests/queue/test_fetching.py). No job waits longer than before: an arrival
always wakes a waiting slot, and a backlog is fetched slot after slot, a round trip or two each.

A completed job's slot asks for the next job in the completion's own script call
(`moveToFinished` with `fetchNext`, as bullmq's Node worker does; the Python one never asks):
while there is a backlog, a job costs the worker one Redis round trip fewer. Not while the
worker is paused or closing (a shutdown takes no new job), nor after the queue was last found
empty (the slot then waits for the marker, as above).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bullmq import Job, Worker
from bullmq.custom_errors import DelayedError, UnrecoverableError, WaitingChildrenError


class FetchingWorker(Worker):  # type: ignore[misc]  # bullmq is untyped
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._asking = asyncio.Lock()
        self._answered: Any = None  # the wait whose wake-up a fetch has already answered
        self._empty = False  # the last fetch (or completion) found no job
        self.drained: bool = self.drained  # bullmq's: the queue was found empty (typed here)

    async def moveToActive(self, token: str) -> Any:
        async with self._asking:
            waiting = self.waiting
            # The marker (or the wait's timeout) woke the waiting slot: one fetch answers it,
            # whichever slot asks first (the wait stays set until its slot has fetched).
            woken = waiting is not None and waiting.done() and waiting is not self._answered
            if woken:
                self._answered = waiting
            elif self.drained:
                return None  # found empty a moment ago: wait for the marker instead
            job = await super().moveToActive(token)
            if woken and job is not None:
                # bullmq's move of a job leaves a marker, so more jobs are looked for by the
                # slot it wakes: the free slots wait for it rather than ask now as well.
                self.drained = True
            return job

    async def nextJobFromJobData(self, job_data: Any = None, *args: Any, **kwargs: Any) -> Any:
        self._empty = not job_data
        return await super().nextJobFromJobData(job_data, *args, **kwargs)

    def _fetches_next(self) -> bool:
        return not (self.closing or self.paused or self.forceClosing or self._empty)

    async def processJob(self, job: Job, token: str) -> Job | None:
        """bullmq 3.4's `Worker.processJob`, completing with `fetchNext`: returns the next job
        (its lock taken with the same token), which bullmq's run loop then processes in this
        slot, or None."""
        fetched: list[Any] | None = None  # what the completion fetched, when it asked
        try:
            if "removeOnComplete" not in job.opts and "removeOnComplete" in self.opts:
                job.opts["removeOnComplete"] = self.opts["removeOnComplete"]
            if "removeOnFail" not in job.opts and "removeOnFail" in self.opts:
                job.opts["removeOnFail"] = self.opts["removeOnFail"]
            self.jobs.add((job, token))
            controller = self.lockManager.track_job(
                job.id,
                token,
                int(time.time() * 1000),
                should_create_controller=self._processor_wants_signal,
            )
            if job.deferredFailure:
                await job.moveToFailed(UnrecoverableError(job.deferredFailure), token)
                self.emit("failed", job, UnrecoverableError(job.deferredFailure))
                return None
            if controller is not None:
                result = await self.processor(job, token, controller.signal)
            else:
                result = await self.processor(job, token)
            if not self.forceClosing:
                fetch = self._fetches_next()
                moved = await self.backend.moveToCompleted(
                    job, result, job.opts.get("removeOnComplete", False), token, fetch_next=fetch
                )
                job.returnvalue = result
                job.attemptsMade = job.attemptsMade + 1
                if fetch:
                    fetched = moved.get("result") or [None, None, 0, 0]
            self.emit("completed", job, result)
        except (DelayedError, WaitingChildrenError):
            return None
        except Exception as err:
            try:
                if not self.forceClosing:
                    await job.moveToFailed(err, token)
                self.emit("failed", job, err)
            except Exception as failed:
                self.emit("error", failed, job)
        finally:
            self.jobs.discard((job, token))
            self.lockManager.untrack_job(job.id)
        if fetched is None:
            return None
        try:  # the completed job stays completed whatever happens to the next one
            return await self._next(fetched, token)
        except Exception as err:  # its lock expires and the stalled check gives it back
            self.emit("error", err)
            return None

    async def _next(self, fetched: list[Any], token: str) -> Job | None:
        """The job the completion fetched, as `moveToActive` would have returned it (marking
        the queue drained when there was none)."""
        job_data, job_id, limit_until, delay_until = fetched
        found = await self.nextJobFromJobData(
            job_data, job_id, limit_until or 0, delay_until or 0, token
        )
        if found is not None:
            self.emit("active", found, "waiting")
        return found
