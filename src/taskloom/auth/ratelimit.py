"""Counters in Redis. Fixed windows: sign-in attempts per account and per client IP,
registrations per client IP, and a general per-subject limit (GDPR export and erasure). GCRA
(a smooth rate, one script per request): the API's limits per API key or session and per client
IP on /auth/* (taskloom/auth/api_limits.py).

E-mail addresses and IP addresses are personal data, and a plain hash of either is found again
by trying them all (there are only 2^32 IPv4 addresses): key names carry an HMAC of them under a
key derived from JWT_SECRET, so a Redis dump or a monitoring tool showing key names reveals
neither.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from taskloom.config import Settings
from taskloom.errors import RateLimited
from taskloom.redis import Keys

# Checks both counters and takes one attempt from each, or none: atomic, so a burst of parallel
# sign-ins cannot all pass the check before any of them is counted. SET NX starts a window (and
# its expiry) once; INCR keeps the TTL (Redis 6.2 lacks EXPIRE ... NX).
# KEYS: account, ip. ARGV: account limit, ip limit, window seconds.
# Returns {0, 0} when reserved, else {1 (account) or 2 (ip), seconds left in that window}.
_RESERVE = """
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
for i = 1, 2 do
  redis.call('SET', KEYS[i], 0, 'EX', ARGV[3], 'NX')
end
for i = 1, 2 do
  if tonumber(redis.call('GET', KEYS[i])) >= limits[i] then
    return {i, redis.call('TTL', KEYS[i])}
  end
end
for i = 1, 2 do
  redis.call('INCR', KEYS[i])
end
return {0, 0}
"""

# Gives a reservation back; never below zero, never recreates a key whose window has ended.
_RELEASE = """
for _, key in ipairs(KEYS) do
  local used = tonumber(redis.call('GET', key) or '0')
  if used > 0 then
    redis.call('DECR', key)
  end
end
"""


# GCRA (generic cell rate algorithm): a key holds its "theoretical arrival time" (TAT), the time
# at which it would be back to a full quota. A request is allowed when it moves the TAT no further
# than one window ahead of now; each one moves it by window/quota. One key, one round trip, no
# list of timestamps. The clock is Redis's (TIME), so API processes on hosts whose clocks disagree
# share one count; Redis 5+ replicates a script's effects, so TIME before a write is allowed.
# Microseconds, written with %.0f: Lua's own number format would round them.
# KEYS: the counter. ARGV: microseconds per request, window in microseconds.
# Returns {1, remaining, microseconds until full} or {0, 0, microseconds until one is allowed}.
_GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > window then
  return {0, 0, new_tat - window - now}
end
local ttl = math.max(math.ceil((new_tat - now) / 1000), 1)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
return {1, math.floor((window - (new_tat - now)) / interval), new_tat - now}
"""
# EVALSHA names a script by its SHA-1 (Redis's choice; an identifier here, not a security measure).
_GCRA_SHA = hashlib.sha1(_GCRA.encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Rate:
    """A quota of requests per window, named as the RateLimit-Policy header names it."""

    name: str
    quota: int
    window_seconds: int


@dataclass(frozen=True)
class Allowance:
    """Where a key stands after a request: allowed or not, the requests left now, and the seconds
    until the quota is whole again (refused: until the next request is allowed)."""

    rate: Rate
    allowed: bool
    remaining: int
    reset_seconds: int


async def take(*, redis: Redis, key: str, rate: Rate) -> Allowance:
    """Count one request against `key` at `rate` (GCRA), unless that would exceed it."""
    window = rate.window_seconds * 1_000_000
    # A microsecond per request at least (quotas beyond a million a second are no limit).
    args = (max(window // rate.quota, 1), window)
    try:
        allowed, remaining, micros = await redis.evalsha(_GCRA_SHA, 1, key, *args)
    except NoScriptError:  # first use on this server (or after SCRIPT FLUSH): load it
        allowed, remaining, micros = await redis.eval(_GCRA, 1, key, *args)
    return Allowance(
        rate=rate,
        allowed=bool(allowed),
        remaining=int(remaining),
        reset_seconds=max(math.ceil(int(micros) / 1_000_000), 0 if allowed else 1),
    )


def _digest(settings: Settings, value: str) -> str:
    key = hashlib.sha256(
        b"taskloom.ratelimit|" + settings.jwt_secret.get_secret_value().encode()
    ).digest()
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


# Keys one script uses together share a Redis Cluster slot (`Keys.together`): a sign-in's
# account and IP counters (`login`), and the API's counters with the principal cache's stamps
# (`auth`, principal_cache.check).
LOGIN, AUTH = "login", "auth"


def account_key(*, settings: Settings, keys: Keys, email: str) -> str:
    return keys.together(LOGIN, "ratelimit", "login", "account", _digest(settings, email.lower()))


def _ip_key(settings: Settings, keys: Keys, *parts: str, ip: str | None) -> str:
    return keys("ratelimit", *parts, "ip", _digest(settings, ip or "unknown"))


def _login_ip_key(settings: Settings, keys: Keys, ip: str | None) -> str:
    return keys.together(LOGIN, "ratelimit", "login", "ip", _digest(settings, ip or "unknown"))


def auth_ip_key(*, settings: Settings, keys: Keys, ip: str | None) -> str:
    return _ip_key(settings, keys, "auth", ip=ip)


def api_key_key(*, settings: Settings, keys: Keys, rate: str, token: str) -> str:
    """An API key's counter, named by a keyed hash of the key: it is counted before the database
    is asked whether the key exists (a refused request does no work), and never appears itself."""
    return keys.together(AUTH, "ratelimit", "api", rate, "key", _digest(settings, token))


def session_key(*, keys: Keys, rate: str, session_id: uuid.UUID) -> str:
    """A session's counter: its bearer requests and its web UI pages share it. A session id is
    not a credential (the signed access token is)."""
    return keys.together(AUTH, "ratelimit", "api", rate, "session", str(session_id))


@dataclass(frozen=True)
class LoginAttempt:
    """One sign-in attempt, counted against its account and IP from before the password is
    checked. A wrong password keeps the count (it is the failure); anything else gives it back."""

    redis: Redis
    account_key: str
    ip_key: str

    async def succeeded(self) -> None:
        """The password was right: the account's failures are forgiven, the IP's slot returned."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.account_key)
            pipe.eval(_RELEASE, 1, self.ip_key)
            await pipe.execute()

    async def abandoned(self) -> None:
        """The attempt ended before the password was judged (e.g. the database failed)."""
        await self.redis.eval(_RELEASE, 2, self.account_key, self.ip_key)


async def reserve_login(
    *, redis: Redis, settings: Settings, keys: Keys, email: str, ip: str | None
) -> LoginAttempt:
    """Count a sign-in attempt, or raise RateLimited when the account or the IP has used up its
    failed attempts in the window (LOGIN_MAX_FAILURES_PER_ACCOUNT / _PER_IP)."""
    attempt = LoginAttempt(
        redis=redis,
        account_key=account_key(settings=settings, keys=keys, email=email),
        ip_key=_login_ip_key(settings, keys, ip),
    )
    refused, ttl = await redis.eval(
        _RESERVE,
        2,
        attempt.account_key,
        attempt.ip_key,
        settings.login_max_failures_per_account,
        settings.login_max_failures_per_ip,
        settings.login_failure_window_seconds,
    )
    if int(refused) == 1:
        raise RateLimited(
            "too many failed sign-in attempts for this account; try again later",
            retry_after=int(ttl),
        )
    if int(refused) == 2:
        raise RateLimited(
            "too many failed sign-in attempts from this address; try again later",
            retry_after=int(ttl),
        )
    return attempt


async def consume_registration(
    *, redis: Redis, settings: Settings, keys: Keys, ip: str | None
) -> None:
    """Count a registration from `ip`; RateLimited past REGISTER_MAX_PER_IP in the window."""
    await consume(
        redis=redis,
        key=_ip_key(settings, keys, "register", ip=ip),
        limit=settings.register_max_per_ip,
        window_seconds=settings.register_window_seconds,
        what="registration",
    )


async def consume(*, redis: Redis, key: str, limit: int, window_seconds: int, what: str) -> None:
    """Count one use of `key` in its window; RateLimited (429 + Retry-After) past `limit`."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=window_seconds, nx=True)
        pipe.incr(key)
        pipe.ttl(key)
        _, used, ttl = await pipe.execute()
    if int(used) > limit:
        raise RateLimited(
            f"too many {what} requests; try again later", retry_after=max(int(ttl), 1)
        )
