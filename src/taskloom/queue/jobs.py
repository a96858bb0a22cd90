"""BullMQ queues as Taskloom's producers see them: one `JobQueue` per queue a domain declares
(`QueueSpec`), all of them reached through `Queues` (`runtime.queues[name]`). The host knows
no domain: executions, GDPR exports and webhook deliveries each declare their queue next to
their job, and `taskloom/jobs.py` lists them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bullmq import Job, Queue

from taskloom.config import Settings
from taskloom.redis import bullmq_options

# Finished jobs are kept a while for inspection; the domains' rows are the record.
KEEP_COMPLETED = {"age": 3_600, "count": 10_000}
KEEP_FAILED = {"age": 14 * 86_400}
# BullMQ would keep each failed attempt's Python traceback, whose chained exceptions quote
# errors that may echo a person's input; failure reasons are codes (executions/runner.py).
NO_STACKTRACE = {"stackTraceLimit": 0}


@dataclass(frozen=True)
class QueueSpec:
    """A queue a domain owns: its BullMQ name (Node bullmq and existing deployments read it),
    the one job name it carries, the producer connection's purpose (its Redis client name) and
    the retry options of its jobs (attempts, backoff), read from the settings."""

    name: str
    job_name: str
    purpose: str
    retries: Callable[[Settings], dict[str, Any]]
    # Its job counts are the ones /health/queue and the admin health page report.
    health: bool = False
    # A job whose data holds this key is removed as soon as it completes, not kept for
    # KEEP_COMPLETED: what the key holds leaves Redis with it (executions/inline.py).
    dropped_when_done_with: str | None = None


class JobQueue:
    """One queue's producer. Job ids are the domain's row ids, so adding a job twice is a
    no-op and a job can always be matched with its row."""

    def __init__(self, spec: QueueSpec, settings: Settings) -> None:
        self.spec = spec
        self.name = spec.name
        self.queue = Queue(spec.name, bullmq_options(settings, purpose=spec.purpose))
        self._defaults: dict[str, Any] = {
            **spec.retries(settings),
            "removeOnComplete": KEEP_COMPLETED,
            "removeOnFail": KEEP_FAILED,
            **NO_STACKTRACE,
        }

    def options(self, job_id: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        options = {"jobId": job_id, **self._defaults}
        key = self.spec.dropped_when_done_with
        if key is not None and data is not None and key in data:
            options["removeOnComplete"] = True
        return options

    async def add(self, data: dict[str, Any], *, job_id: str) -> None:
        await self.queue.add(self.spec.job_name, data, self.options(job_id, data))

    async def add_bulk(self, jobs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Add (job id, data) pairs in one round trip (bullmq's Python `add` costs about four
        times the CPU of `addBulk` per job; a single job takes the plain `add`)."""
        if len(jobs) == 1:
            job_id, data = jobs[0]
            await self.add(data, job_id=job_id)
        elif jobs:
            await self.queue.addBulk(
                [
                    {"name": self.spec.job_name, "data": data, "opts": self.options(job_id, data)}
                    for job_id, data in jobs
                ]
            )

    async def remove(self, job_id: str) -> bool:
        """Remove the job unless a worker holds it (then the worker sees its row's state)."""
        try:
            return bool(await self.queue.remove(job_id))
        except Exception:  # bullmq raises a plain Exception when the job is locked
            return False

    async def state(self, job_id: str) -> str:
        """waiting, active, delayed, prioritized, completed, failed, or unknown (no such job)."""
        return str(await self.queue.getJobState(job_id))

    async def job(self, job_id: str) -> Job | None:
        return await self.queue.getJob(job_id)

    async def counts(self) -> dict[str, int]:
        counts = await self.queue.getJobCounts()
        return {state: int(n) for state, n in counts.items()}

    async def close(self) -> None:
        await self.queue.close()


class Queues:
    """Every declared queue's producer, by name, opened once per process."""

    def __init__(self, specs: Iterable[QueueSpec], settings: Settings) -> None:
        self._queues = {spec.name: JobQueue(spec, settings) for spec in specs}

    def __getitem__(self, name: str) -> JobQueue:
        return self._queues[name]

    def __iter__(self) -> Iterator[JobQueue]:
        return iter(self._queues.values())

    async def health_counts(self) -> dict[str, int]:
        """Job counts by state of the queue(s) whose spec says `health` (summed)."""
        total: dict[str, int] = {}
        for queue in self:
            if queue.spec.health:
                for state, n in (await queue.counts()).items():
                    total[state] = total.get(state, 0) + n
        return total

    async def close(self) -> None:
        for queue in self:
            await queue.close()
