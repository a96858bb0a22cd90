"""Principals resolved from PostgreSQL, kept in this process and trusted again only after Redis
vouches for them (docs/adr/0010-principal-cache-validated-in-redis.md).

A bearer token (access JWT or API key) costs a PostgreSQL lookup the first time; its principal
(user, organization, role, superuser flag, session or key id) is then kept here, keyed by a hash
of the token, in a bounded LRU. Every later request runs one Redis script that both counts the
request against its rate limit (GCRA, as `ratelimit.take`) and returns:

- the user's revocation stamp, `auth:stamp:<user id>`: every change that can end or reduce a
  person's access (sign-out, revoked sessions, role change, removal, key revocation, erasure)
  increments it once committed (taskloom/auth/revocation.py);
- the Redis server's `run_id`, which changes when the server restarts or another one takes over
  (failover): then Redis may have lost increments, so no entry filled before is trusted.

An entry is used only when both equal what they were when it was filled (read *before* the
PostgreSQL lookup that filled it, so a revocation committed during the lookup is never missed),
and while the session, the key, the access token and the entry itself (AUTH_CACHE_TTL_SECONDS)
are unexpired by this process's clock. Anything else, including Redis failing to answer, is a
PostgreSQL lookup exactly as without the cache.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from taskloom.auth.principal import Principal
from taskloom.auth.ratelimit import Allowance, Rate
from taskloom.redis import Keys

# GCRA as in ratelimit._GCRA when ARGV[1] > 0 (else no counting), then the stamp (KEYS[2], when
# given) and the server's run_id. KEYS: the rate-limit counter, [the user's stamp].
# Returns {allowed, remaining, microseconds, run_id, stamp or false}.
_CHECK = """
local allowed, remaining, micros = 1, 0, 0
local interval, window = tonumber(ARGV[1]), tonumber(ARGV[2])
if interval > 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  if new_tat - now > window then
    allowed, micros = 0, new_tat - window - now
  else
    local ttl = math.max(math.ceil((new_tat - now) / 1000), 1)
    redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
    remaining, micros = math.floor((window - (new_tat - now)) / interval), new_tat - now
  end
end
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local stamp = false
if #KEYS > 1 then stamp = redis.call('GET', KEYS[2]) end
return {allowed, remaining, micros, run_id, stamp}
"""
# EVALSHA names a script by its SHA-1 (Redis's choice; an identifier, not a security measure).
_CHECK_SHA = hashlib.sha1(_CHECK.encode(), usedforsecurity=False).hexdigest()


def stamp_key(keys: Keys, user_id: uuid.UUID) -> str:
    return keys("auth", "stamp", str(user_id))


@dataclass(frozen=True)
class Vouch:
    """What Redis said about a request: its rate-limit allowance (None: not counted) and the
    state an entry must match to be trusted."""

    allowance: Allowance | None
    run_id: str
    stamp: str | None


async def check(
    *, redis: Redis, keys: Keys, rate: Rate | None, rate_key: str, user_id: uuid.UUID | None
) -> Vouch:
    """One round trip: count the request at `rate` (None: rate limits are off) and read the
    user's stamp (when the user is known) and the server's run_id."""
    script_keys = [rate_key] if user_id is None else [rate_key, stamp_key(keys, user_id)]
    if rate is None:
        args: tuple[int, int] = (0, 0)
    else:
        window = rate.window_seconds * 1_000_000
        args = (max(window // rate.quota, 1), window)
    try:
        reply = await redis.evalsha(_CHECK_SHA, len(script_keys), *script_keys, *args)
    except NoScriptError:  # first use on this server (or after SCRIPT FLUSH): load it
        reply = await redis.eval(_CHECK, len(script_keys), *script_keys, *args)
    allowed, remaining, micros, run_id, stamp = reply
    allowance = None
    if rate is not None:
        allowance = Allowance(
            rate=rate,
            allowed=bool(allowed),
            remaining=int(remaining),
            reset_seconds=max(math.ceil(int(micros) / 1_000_000), 0 if allowed else 1),
        )
    return Vouch(allowance=allowance, run_id=_text(run_id), stamp=_text(stamp) if stamp else None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Entry:
    """A token's principal as PostgreSQL gave it, and the Redis state it was read under.
    `principal` None: only the user is known so far (an API key's first use: its user is
    learnt from the lookup itself, after Redis was asked, so nothing was vouched for)."""

    user_id: uuid.UUID
    org_id: uuid.UUID | None
    principal: Principal | None
    run_id: str
    stamp: str | None
    expires: float  # time.time(): the earliest of token, session or key, and entry expiry


class PrincipalCache:
    """A bounded LRU of entries by token digest; per process, never shared."""

    def __init__(self, *, size: int, ttl_seconds: float) -> None:
        self.size = size
        self.ttl_seconds = ttl_seconds
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl_seconds > 0

    @staticmethod
    def digest(token: str) -> bytes:
        return hashlib.blake2b(token.encode(), digest_size=20).digest()

    def get(self, digest: bytes) -> Entry | None:
        """The entry while it is unexpired (by this process's clock), else None."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.expires <= time.time():
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry

    def put(
        self,
        digest: bytes,
        *,
        user_id: uuid.UUID,
        org_id: uuid.UUID | None,
        principal: Principal | None,
        vouch: Vouch | None,
        expires: float,
    ) -> None:
        if not self.enabled:
            return
        self._entries[digest] = Entry(
            user_id=user_id,
            org_id=org_id,
            principal=principal if vouch is not None else None,
            run_id=vouch.run_id if vouch else "",
            stamp=vouch.stamp if vouch else None,
            expires=min(expires, time.time() + self.ttl_seconds),
        )
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, digest: bytes) -> None:
        self._entries.pop(digest, None)

    def forget_users(self, user_ids: set[uuid.UUID]) -> None:
        """Drop every entry of these users (this process revoked their access)."""
        for digest in [d for d, e in self._entries.items() if e.user_id in user_ids]:
            del self._entries[digest]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def vouched(entry: Entry, vouch: Vouch | None) -> bool:
    """Whether Redis's answer lets `entry` stand in for a PostgreSQL lookup."""
    return (
        entry.principal is not None
        and vouch is not None
        and entry.run_id == vouch.run_id
        and entry.stamp == vouch.stamp
    )
