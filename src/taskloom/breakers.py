"""Circuit breakers for calls to things outside Taskloom (AI providers, tool connections): after
`failure_threshold` failures in a row a breaker opens and calls fail at once for `reset_seconds`;
then one trial call is let through (half-open) and its outcome closes or re-opens it. Each
breaker is named by what it protects (e.g. `tool:<connection id>`), so one connection's failures
never open another's. `circuit_breaker_state{name}` and /health/circuits show the state.

State is per process by default (BREAKER_SHARING=process). With BREAKER_SHARING=redis every
process asks the same breaker in Redis (shared_breakers.py): failures anywhere open it for all,
and one trial call at a time across every process probes a provider that failed. The interface
is the same either way, and asynchronous because a shared breaker asks Redis:
`await breaker.before_call()`, then `record_success` / `record_failure` / `abandon_trial`."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, TypeVar

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


class Breaker(Protocol):
    """What the callers (ai/executor.py, tools/executor.py) and the health views use."""

    name: str

    @property
    def state(self) -> BreakerState: ...

    @property
    def failures(self) -> int: ...

    async def before_call(self) -> None: ...

    async def record_success(self) -> None: ...

    async def record_failure(self) -> None: ...

    async def abandon_trial(self) -> None: ...

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T: ...


class BreakerStore(Protocol):
    """Where shared breakers keep their state (shared_breakers.RedisBreakers)."""

    def breaker(self, name: str, *, failure_threshold: int, reset_seconds: float) -> Breaker: ...

    async def reset(self, name: str) -> None: ...


@dataclass
class CircuitBreaker:
    """A breaker whose state lives in this process only."""

    name: str
    failure_threshold: int = 5
    reset_seconds: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    _trial_running: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        export_state(self.name, self.state)

    def _set(self, state: BreakerState) -> None:
        self.state = state
        export_state(self.name, state)

    async def before_call(self) -> None:
        """Raise CircuitOpen unless a call may go ahead now."""
        self.check()

    async def record_success(self) -> None:
        self.succeeded()

    async def record_failure(self) -> None:
        self.failed()

    async def abandon_trial(self) -> None:
        """The call was cancelled before it had an outcome: let the next call be the trial."""
        self.abandoned()

    # The same, synchronous: the shared breaker's fallback while Redis is unreachable.

    def check(self) -> None:
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

    def succeeded(self) -> None:
        with self._lock:
            self.failures, self._trial_running = 0, False
            self._set(BreakerState.CLOSED)

    def failed(self) -> None:
        with self._lock:
            self.failures += 1
            trial_failed = self.state is BreakerState.HALF_OPEN
            self._trial_running = False
            if trial_failed or self.failures >= self.failure_threshold:
                self.opened_at = time.monotonic()
                self._set(BreakerState.OPEN)

    def abandoned(self) -> None:
        with self._lock:
            self._trial_running = False

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await call(self, fn)


async def call(breaker: Breaker, fn: Callable[[], Awaitable[T]]) -> T:
    """`fn()` behind `breaker`: any exception counts as a failure."""
    await breaker.before_call()
    try:
        result = await fn()
    except BaseException:
        await breaker.record_failure()
        raise
    await breaker.record_success()
    return result


class Breakers:
    """The breakers this process uses, by name: its own (the default), or views of shared ones
    once `share` gave it a store."""

    def __init__(self, store: BreakerStore | None = None) -> None:
        self._by_name: dict[str, Breaker] = {}
        self._lock = threading.Lock()
        self.store = store

    def share(self, store: BreakerStore | None) -> None:
        """Use `store`'s shared breakers from now on (None: this process's own again)."""
        with self._lock:
            self.store = store
            self._by_name.clear()

    def get(self, name: str, *, failure_threshold: int = 5, reset_seconds: float = 30.0) -> Breaker:
        with self._lock:
            if name not in self._by_name:
                self._by_name[name] = (
                    CircuitBreaker(
                        name, failure_threshold=failure_threshold, reset_seconds=reset_seconds
                    )
                    if self.store is None
                    else self.store.breaker(
                        name, failure_threshold=failure_threshold, reset_seconds=reset_seconds
                    )
                )
            return self._by_name[name]

    def remove(self, name: str) -> None:
        """Forget this process's breaker (a shared breaker's state stays in Redis)."""
        with self._lock:
            self._by_name.pop(name, None)
        _unexport(name)

    async def reset(self, name: str) -> None:
        """Start the breaker afresh (its connection's credentials or URL changed): this
        process's, and when shared, every process's."""
        self.remove(name)
        if self.store is not None:
            await self.store.reset(name)

    def all(self) -> list[Breaker]:
        with self._lock:
            return sorted(self._by_name.values(), key=lambda b: b.name)


BREAKERS = Breakers()

# Breakers are named after tenants' connections: past the first MAX_NAMED_BREAKERS of a process
# they share the series `other`, which shows the worst state among them.
_folded: dict[str, BreakerState] = {}
_folded_lock = threading.Lock()


def export_state(name: str, state: BreakerState) -> None:
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
