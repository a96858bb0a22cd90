"""Circuit breakers shared by every process through Redis (BREAKER_SHARING=redis; docs/SCALING.md
"Many hosts"): with five workers, a breaker per process lets five times the calls through to a
provider that is failing, and five trial calls at once when it may have recovered.

One hash per breaker, `<prefix>breaker:<name>`: `f` failures in a row, `o` open until (Redis's
clock, ms), `p` + `t` the trial call's lease (until when, and who holds it). No key: closed, no
failures. One key per breaker, so a Redis Cluster keeps each in one slot. Each transition is one
call of one script, so processes never race: failures count up and open the breaker at the
threshold, a success deletes the key (closed for everyone), and once the open time has passed
exactly one caller across every process gets the lease and makes the trial call. Every write
sets the key's TTL to the time it must still be known plus FORGET_SECONDS: a breaker nobody
calls any more (a deleted connection) disappears.

Per call: a breaker seen closed with no failures is trusted for BREAKER_SHARED_CACHE_SECONDS
(before_call and a success need no round trip then), one seen open is trusted until its time
comes; a failure is always one round trip. Redis unreachable or slower than TIMEOUT_SECONDS:
each breaker falls back to one of this process (as with BREAKER_SHARING=process) and Redis is
asked again after RETRY_SECONDS. Calls are never held up by Redis being down; the switch is
logged both ways and `circuit_breaker_sharing_degraded` is 1 meanwhile."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskloom.breakers import BreakerState, CircuitBreaker, CircuitOpen, call, export_state
from taskloom.observability.metrics import CIRCUIT_SHARING_DEGRADED
from taskloom.redis import Keys

log = structlog.get_logger("taskloom.breakers")
T = TypeVar("T")

TIMEOUT_SECONDS = 0.5  # one script call; past it, Redis counts as unreachable
RETRY_SECONDS = 5.0  # how long the process's own breakers decide before Redis is asked again
FORGET_SECONDS = 600  # a breaker's key outlives its last change by this much

# KEYS[1]: the breaker. ARGV: op, failure threshold, reset ms, forget ms, lease ms, token.
# Returns {state (0 closed, 1 half-open, 2 open), failures, ms (until open ends / the lease
# ends), 1 when this caller got the trial's lease}.
_SCRIPT = """
local key, op = KEYS[1], ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local forget = tonumber(ARGV[4])
local h = redis.call('HMGET', key, 'f', 'o', 'p', 't')
local failures = tonumber(h[1]) or 0
local open_until = tonumber(h[2]) or 0
local lease_until = tonumber(h[3]) or 0
if op == 'allow' then
  if open_until == 0 then return {0, failures, 0, 0} end
  if now < open_until then return {2, failures, open_until - now, 0} end
  if lease_until > now then return {1, failures, lease_until - now, 0} end
  local lease = tonumber(ARGV[5])
  redis.call('HSET', key, 'p', now + lease, 't', ARGV[6])
  redis.call('PEXPIRE', key, lease + forget)
  return {1, failures, lease, 1}
elseif op == 'failure' then
  failures = failures + 1
  if open_until > 0 or failures >= tonumber(ARGV[2]) then
    local reset = tonumber(ARGV[3])
    redis.call('HSET', key, 'f', failures, 'o', now + reset)
    redis.call('HDEL', key, 'p', 't')
    redis.call('PEXPIRE', key, reset + forget)
    return {2, failures, reset, 0}
  end
  redis.call('HSET', key, 'f', failures)
  redis.call('PEXPIRE', key, forget)
  return {0, failures, 0, 0}
elseif op == 'success' then
  redis.call('DEL', key)
  return {0, 0, 0, 0}
elseif op == 'abandon' then
  if h[4] == ARGV[6] then redis.call('HDEL', key, 'p', 't') end
  return {0, 0, 0, 0}
end
return redis.error_reply('unknown op ' .. op)
"""


class RedisBreakers:
    """The store behind `Breakers.share`: builds shared breakers and runs their script, and
    knows whether Redis answers (one switch for every breaker of the process)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        cache_seconds: float = 1.0,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cache_seconds = cache_seconds
        self.retry_seconds = retry_seconds
        self._script = redis.register_script(_SCRIPT)
        self._retry_at = 0.0  # monotonic; before it, Redis is not asked
        self._degraded = False
        self._lock = threading.Lock()

    def key(self, name: str) -> str:
        return self.keys("breaker", name)

    def breaker(self, name: str, *, failure_threshold: int, reset_seconds: float) -> SharedBreaker:
        return SharedBreaker(
            name, store=self, failure_threshold=failure_threshold, reset_seconds=reset_seconds
        )

    @property
    def degraded(self) -> bool:
        """True while this process's breakers decide on their own (Redis did not answer)."""
        return self._degraded and time.monotonic() < self._retry_at

    async def run(self, name: str, argv: list[int | str]) -> list[int] | None:
        """One script call for breaker `name`, or None when Redis is unreachable (then not asked
        again for RETRY_SECONDS)."""
        if self._degraded and time.monotonic() < self._retry_at:
            return None
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                reply = await self._script(keys=[self.key(name)], args=argv)
        except (RedisError, OSError, TimeoutError) as error:
            self._went_down(error)
            return None
        if self._degraded:
            self._came_back()
        return [int(value) for value in reply]

    async def reset(self, name: str) -> None:
        """Delete the breaker's shared state (closed, for every process). Redis down: logged,
        and the state expires on its own."""
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                await self.redis.delete(self.key(name))
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("breaker_reset_unavailable", breaker=name, error=type(error).__name__)

    def _went_down(self, error: BaseException) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + self.retry_seconds
            if self._degraded:
                return
            self._degraded = True
        CIRCUIT_SHARING_DEGRADED.set(1)
        log.warning(
            "breaker_sharing_unavailable",
            error=type(error).__name__,
            hint=f"Redis did not answer: circuit breakers decide per process; Redis is asked "
            f"again every {self.retry_seconds:g} s",
        )

    def _came_back(self) -> None:
        with self._lock:
            if not self._degraded:
                return
            self._degraded = False
        CIRCUIT_SHARING_DEGRADED.set(0)
        log.info("breaker_sharing_restored")


@dataclass
class _Seen:
    """What this process last heard from Redis about one breaker."""

    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    trusted_until: float = 0.0  # monotonic: closed (or a trial held elsewhere) until then
    open_until: float = 0.0  # monotonic


class SharedBreaker:
    """A view of one shared breaker, with the same interface as `CircuitBreaker`."""

    def __init__(
        self, name: str, *, store: RedisBreakers, failure_threshold: int, reset_seconds: float
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._store = store
        self._seen = _Seen()
        self._token: str | None = None  # this process holds the trial's lease
        # Used while Redis is unreachable; created now so its state gauge exists.
        self._local = CircuitBreaker(
            name, failure_threshold=failure_threshold, reset_seconds=reset_seconds
        )

    @property
    def state(self) -> BreakerState:
        return self._local.state if self._store.degraded else self._seen.state

    @property
    def failures(self) -> int:
        return self._local.failures if self._store.degraded else self._seen.failures

    async def before_call(self) -> None:
        """Raise CircuitOpen unless a call may go ahead now."""
        now, seen = time.monotonic(), self._seen
        if not self._store.degraded:
            if seen.state is BreakerState.CLOSED and now < seen.trusted_until:
                return
            if seen.state is BreakerState.OPEN and now < seen.open_until:
                raise CircuitOpen(self.name, seen.open_until - now)
            if seen.state is BreakerState.HALF_OPEN and now < seen.trusted_until:
                raise CircuitOpen(self.name, 0)  # another caller's trial is running
        token = secrets.token_hex(8)
        reply = await self._run("allow", token)
        if reply is None:
            self._local.check()
            return
        state, _, wait_ms, granted = reply
        self._saw(reply)
        if granted:
            self._token = token
        elif state == BreakerState.OPEN:
            raise CircuitOpen(self.name, wait_ms / 1000)
        elif state == BreakerState.HALF_OPEN:
            raise CircuitOpen(self.name, 0)

    async def record_success(self) -> None:
        seen = self._seen
        if self._token is None and seen.state is BreakerState.CLOSED and seen.failures == 0:
            self._local.succeeded()  # nothing to tell Redis: it has nothing to forget
            return
        self._token = None
        reply = await self._run("success")
        self._local.succeeded()
        if reply is not None:
            self._saw(reply)

    async def record_failure(self) -> None:
        self._token = None
        reply = await self._run("failure")
        if reply is None:
            self._local.failed()
            return
        self._saw(reply)

    async def abandon_trial(self) -> None:
        """The call was cancelled before it had an outcome: let the next call be the trial."""
        token, self._token = self._token, None
        self._local.abandoned()
        if token is not None:
            await self._run("abandon", token)
            self._seen.trusted_until = 0.0

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await call(self, fn)

    async def _run(self, op: str, token: str = "") -> list[int] | None:
        reset_ms = round(self.reset_seconds * 1000)
        # The trial's lease lasts one reset period: a trial caller that died holds up the next
        # trial by that much at most.
        argv: list[int | str] = [
            op,
            self.failure_threshold,
            reset_ms,
            FORGET_SECONDS * 1000,
            reset_ms,
            token,
        ]
        return await self._store.run(self.name, argv)

    def _saw(self, reply: list[int]) -> None:
        state, failures, wait_ms, granted = reply
        now, seen = time.monotonic(), self._seen
        seen.state, seen.failures = BreakerState(state), failures
        seen.open_until = now + wait_ms / 1000 if state == BreakerState.OPEN else 0.0
        if state == BreakerState.CLOSED and failures == 0:
            seen.trusted_until = now + self._store.cache_seconds
        elif state == BreakerState.HALF_OPEN and not granted:
            seen.trusted_until = now + min(self._store.cache_seconds, wait_ms / 1000)
        else:
            seen.trusted_until = 0.0
        export_state(self.name, seen.state)
