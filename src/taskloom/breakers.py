"""Circuit breakers for calls to things outside Taskloom (AI providers, tool connections): after
`failure_threshold` failures in a row a breaker opens and calls fail at once for `reset_seconds`;
then one trial call is let through (half-open) and its outcome closes or re-opens it. Each
breaker is named by what it protects (e.g. `tool:<connection id>`), so one connection's failures
never open another's. State is per process; `circuit_breaker_state{name}` and /health/circuits
show it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeVar

from taskloom.observability.metrics import BREAKER_NAMES, CIRCUIT_STATE, OTHER

T = TypeVar("T")


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpen(RuntimeError):
    def __init__(self, name: str, retry_in: float) -> None:
        super().__init__(f"circuit {name} is open; retry in {retry_in:.0f} s")
        self.name = name
        self.retry_in = retry_in


@dataclass
class CircuitBreaker:
    name: str
    failure_threshold: int = 5
    reset_seconds: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    _trial_running: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        _export(self.name, self.state)

    def _set(self, state: BreakerState) -> None:
        self.state = state
        _export(self.name, state)

    def before_call(self) -> None:
        """Raise CircuitOpen unless a call may go ahead now."""
        with self._lock:
            if self.state is BreakerState.OPEN:
                waited = time.monotonic() - self.opened_at
                if waited < self.reset_seconds:
                    raise CircuitOpen(self.name, self.reset_seconds - waited)
                self._set(BreakerState.HALF_OPEN)
            if self.state is BreakerState.HALF_OPEN:
                if self._trial_running:
                    raise CircuitOpen(self.name, 0)
                self._trial_running = True

    def record_success(self) -> None:
        with self._lock:
            self.failures, self._trial_running = 0, False
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1
            trial_failed = self.state is BreakerState.HALF_OPEN
            self._trial_running = False
            if trial_failed or self.failures >= self.failure_threshold:
                self.opened_at = time.monotonic()
                self._set(BreakerState.OPEN)

    def abandon_trial(self) -> None:
        """The call was cancelled before it had an outcome: let the next call be the trial."""
        with self._lock:
            self._trial_running = False

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        self.before_call()
        try:
            result = await fn()
        except BaseException:
            self.record_failure()
            raise
        self.record_success()
        return result


class Breakers:
    """The breakers of this process, by name."""

    def __init__(self) -> None:
        self._by_name: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(
        self, name: str, *, failure_threshold: int = 5, reset_seconds: float = 30.0
    ) -> CircuitBreaker:
        with self._lock:
            if name not in self._by_name:
                self._by_name[name] = CircuitBreaker(
                    name, failure_threshold=failure_threshold, reset_seconds=reset_seconds
                )
            return self._by_name[name]

    def remove(self, name: str) -> None:
        with self._lock:
            self._by_name.pop(name, None)
        _unexport(name)

    def all(self) -> list[CircuitBreaker]:
        with self._lock:
            return sorted(self._by_name.values(), key=lambda b: b.name)


BREAKERS = Breakers()

# Breakers are named after tenants' connections: past the first MAX_NAMED_BREAKERS of a process
# they share the series `other`, which shows the worst state among them.
_folded: dict[str, BreakerState] = {}
_folded_lock = threading.Lock()


def _export(name: str, state: BreakerState) -> None:
    if BREAKER_NAMES(name) != OTHER:
        CIRCUIT_STATE.labels(name).set(state)
        return
    with _folded_lock:
        _folded[name] = state
        CIRCUIT_STATE.labels(OTHER).set(max(_folded.values()))


def _unexport(name: str) -> None:
    with _folded_lock:
        if _folded.pop(name, None) is not None:
            CIRCUIT_STATE.labels(OTHER).set(max(_folded.values(), default=BreakerState.CLOSED))
            return
    BREAKER_NAMES.forget(name)
    with contextlib.suppress(KeyError):  # never exported under its name
        CIRCUIT_STATE.remove(name)
