"""The shutdown budget of a worker process: it exits within SHUTDOWN_TIMEOUT_SECONDS +
EXIT_MARGIN_SECONDS of SIGTERM, so an orchestrator whose grace period is just above the timeout
never has to SIGKILL it (docs/OPERATIONS.md, "Stopping a worker").

Running executions get the whole timeout; the hand-back, the queues' close and the heartbeat's
removal share CLOSE_SECONDS after it, each phase bounded by what is left; the process's own exit
(connection pools, buffered spans and errors) gets the rest, and skips the interpreter's
teardown. A watchdog ends the process if something still overruns, rather than leave that to
the orchestrator's SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import NoReturn

import structlog

from taskloom.observability import sentry

log = structlog.get_logger("taskloom.queue")

EXIT_MARGIN_SECONDS = 2.0  # the promise: exit within SHUTDOWN_TIMEOUT_SECONDS + this
CLOSE_SECONDS = 1.5  # hand-back, close and clean-up, after the timeout
WATCHDOG_SECONDS = 1.85  # after the timeout: the process ends then, whatever it is doing


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock, and how much time is left before it."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def left(self, *, keep: float = 0.0) -> float:
        """Seconds until the deadline, less `keep` for what must still follow (never < 0)."""
        return max(0.0, self.at - keep - time.monotonic())


class ExitBudget:
    """The process's side of the budget, from the signal on: a deadline for its last clean-up
    and the watchdog behind it."""

    def __init__(self) -> None:
        self.deadline: Deadline | None = None
        self.watchdog = False

    def start(self, timeout: float, *, watchdog: bool = True) -> None:
        """A stop signal came; the worker has `timeout` for its executions."""
        self.deadline = Deadline.after(timeout + WATCHDOG_SECONDS)
        self.watchdog = watchdog
        if watchdog:
            exit_unless_stopped_within(timeout + WATCHDOG_SECONDS)

    async def bounded(self, step: Awaitable[object]) -> None:
        """Await a clean-up step, cut short shortly before the watchdog (unbounded before a
        signal, e.g. when start-up failed)."""
        if self.deadline is None:
            await step
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(step, self.seconds_left())

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else self.deadline.left(keep=0.1)

    @property
    def started(self) -> bool:
        return self.deadline is not None

    def exit_now(self) -> NoReturn:
        """End the process with status 0 once the shutdown is done, without the interpreter's
        teardown: freeing every module took 0.2-0.8 s on a busy 2-core machine, a third of the
        budget. Everything that matters is closed or flushed by then, and the rest here."""
        sentry.flush(timeout=self.seconds_left() if self.watchdog else None)
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)


def exit_unless_stopped_within(seconds: float) -> threading.Timer:
    """Start a watchdog that ends the process (exit status 1) if it is still running after
    `seconds` (a daemon thread: it ends with a process that stopped in time)."""

    def overran() -> None:
        log.error("shutdown_overran", seconds=round(seconds, 2))
        os._exit(1)

    timer = threading.Timer(seconds, overran)
    timer.daemon = True
    timer.start()
    return timer
