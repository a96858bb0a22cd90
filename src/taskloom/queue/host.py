"""What a domain plugs into the worker: a `JobType` (its queue and the processor of its jobs)
and `Upkeep` (periodic work). The lists are assembled one floor above the domains, in
`taskloom/jobs.py`; the worker (queue/worker.py) runs whatever it is given."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bullmq import Job

from taskloom.config import Settings
from taskloom.queue.jobs import QueueSpec

if TYPE_CHECKING:
    from taskloom.runtime import Runtime


class Processor(Protocol):
    """Runs one job; what it returns or raises is what BullMQ records."""

    async def process(self, job: Job, token: str) -> Any: ...


@runtime_checkable
class Drainable(Processor, Protocol):
    """A processor whose jobs are worth finishing, and whose slots are shared out by the fair
    scheduler (queue/fairness.py). The worker counts its running jobs in its heartbeat, renews
    its slots each beat, waits for its jobs on shutdown, hands back those still running past
    SHUTDOWN_TIMEOUT_SECONDS, and tells it when a job has left the queue for good."""

    idle: asyncio.Event  # set while no job runs

    def running(self) -> int:
        """Jobs running now."""
        ...

    def is_running(self, job_id: str) -> bool:
        """Whether it still runs the job (not handing it back): a lost lock matters then."""
        ...

    def stop_taking(self) -> None:
        """Shutdown: a job fetched from now on is handed back at once."""
        ...

    def hand_back_all(self) -> int:
        """Interrupt every running job, each to be handed back; returns how many."""
        ...

    def job_done(self, job: Job) -> None:
        """The job completed or failed for good (bullmq's events)."""
        ...

    async def warm_up(self) -> None:
        """Before the first job."""
        ...

    async def beat(self, *, worker: str, ttl_seconds: float) -> None:
        """Each heartbeat: the worker is alive for `ttl_seconds` more."""
        ...

    async def leave(self, *, worker: str) -> None:
        """Shutdown: the worker takes no more work (may be called twice)."""
        ...

    async def settle(self, seconds: float) -> None:
        """After the close: finish bookkeeping of the last jobs, within `seconds`."""
        ...

    async def aclose(self) -> None:
        """Release what it holds (processes, connections)."""
        ...


@dataclass(frozen=True)
class JobType:
    """A domain's job: its queue, how to build its processor, the bullmq Worker's options
    (concurrency, lockDuration, stalled checks) and the suffix of that Worker's name."""

    queue: QueueSpec
    processor: Callable[[Runtime], Processor]
    worker_purpose: str
    worker_options: Callable[[Settings], dict[str, Any]]
    name_suffix: str = ""


@dataclass(frozen=True)
class Upkeep:
    """Periodic work a domain owns. `leader_only` upkeeps run, in the order given, on each
    tick of the one worker holding the leader lock (every RECONCILE_INTERVAL_SECONDS); the
    others run on every worker, each in its own loop every `interval(settings)` seconds.
    `at_most_every` (seconds, leader-only upkeep) skips the leader's ticks until that long has
    passed since it last ran in this process: for a scan that need not run every tick."""

    name: str
    run: Callable[[Runtime], Awaitable[None]]
    leader_only: bool = True
    interval: Callable[[Settings], float] | None = None
    at_most_every: float = 0.0

    def __post_init__(self) -> None:
        if self.leader_only == (self.interval is not None):
            raise ValueError(
                f"upkeep {self.name!r}: an interval for upkeep on every worker, and only for it"
            )
        if self.at_most_every and not self.leader_only:
            raise ValueError(f"upkeep {self.name!r}: at_most_every is for leader-only upkeep")
