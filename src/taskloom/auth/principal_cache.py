"""Principals resolved from PostgreSQL, kept in this process and trusted again only after Redis
vouches for them (docs/adr/0010-principal-cache-validated-in-redis.md).

A bearer token (access JWT or API key) costs a PostgreSQL lookup the first time; its principal
(user, organization, role, superuser flag, session or key id) is then kept here, keyed by a hash
of the token, in a bounded LRU. Every later request runs one Redis script that both counts the
request against its rate limit (GCRA, as `ratelimit.take`) and returns:

- the user's revocation stamp, a field of the hash `auth:stamps`: every change that can end or
  reduce a person's access (sign-out, revoked sessions, role change, removal, key revocation,
  erasure) increments it once committed (taskloom/auth/revocation.py);
- the lineage: the Redis server's `run_id`, which changes when the server restarts or another
  takes over (failover), and the hash's `epoch` field, a value written when the hash is created,
  which changes when the hash was lost (FLUSHALL, eviction, a deleted key). Either change means
  Redis may have lost increments, so no entry filled before it is trusted. (The stamps live in
  one hash so that no single stamp can vanish on its own while the epoch stays.)

An entry is used only when both equal what they were when it was filled (read *before* the
PostgreSQL lookup that filled it, so a revocation committed during the lookup is never missed),
and while the session, the key, the access token and the entry itself (AUTH_CACHE_TTL_SECONDS)
are unexpired by this process's clock. Anything else, including Redis failing to answer, is a
PostgreSQL lookup exactly as without the cache.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from taskloom.auth.principal import Principal
from taskloom.auth.ratelimit import AUTH, Allowance, Rate
from taskloom.config import Settings
from taskloom.redis import Keys

# GCRA as in ratelimit._GCRA when ARGV[1] > 0 (else no counting), then the lineage (run_id and
# the stamps' epoch, created here if the hash is new) and the user's stamp (ARGV[3], when given).
# KEYS: the rate-limit counter, the stamps hash.
# Returns {allowed, remaining, microseconds, lineage, stamp or false}.
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
local info = redis.pcall('INFO', 'server')
local run_id = type(info) == 'string' and string.match(info, 'run_id:(%w+)')
if not run_id then return {allowed, remaining, micros, false, false} end
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  local clock = redis.call('TIME')
  epoch = clock[1] .. '.' .. clock[2]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local stamp = false
if ARGV[3] ~= '' then stamp = redis.call('HGET', KEYS[2], ARGV[3]) end
return {allowed, remaining, micros, run_id .. '/' .. epoch, stamp}
"""
# Increments the stamps of the users in ARGV[2..]. A hash grown past ARGV[1] fields (people whose
# access changed since it was created) is dropped instead: every entry is then distrusted once.
_BUMP = """
for i = 2, #ARGV do
  redis.call('HINCRBY', KEYS[1], ARGV[i], 1)
end
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
end
"""
# EVALSHA names a script by its SHA-1 (Redis's choice; an identifier, not a security measure).
_CHECK_SHA = hashlib.sha1(_CHECK.encode(), usedforsecurity=False).hexdigest()


MAX_STAMPS = 100_000


def stamps_key(keys: Keys) -> str:
    """One hash for every process; `check` reads it in the script that counts a request, so
    on a Redis Cluster it shares the API rate counters' slot (`ratelimit.AUTH`)."""
    return keys.together(AUTH, "auth", "stamps")


@functools.lru_cache(maxsize=4)
def _field_key(secret: str) -> bytes:
    return hashlib.sha256(b"taskloom.auth.stamps|" + secret.encode()).digest()


def stamp_field(settings: Settings, user_id: uuid.UUID) -> str:
    """A user's field in the stamps hash: a keyed hash of the id, so that the hash names
    nobody (it outlives an erased account's rows; a Redis dump shows no user ids)."""
    key = _field_key(settings.jwt_secret.get_secret_value())
    return hashlib.blake2b(user_id.bytes, key=key, digest_size=12).hexdigest()


async def bump(*, redis: Redis, keys: Keys, settings: Settings, user_ids: set[uuid.UUID]) -> None:
    """Increment these users' stamps: their entries in every process stop being trusted."""
    fields = (stamp_field(settings, u) for u in user_ids)
    await redis.eval(_BUMP, 1, stamps_key(keys), MAX_STAMPS, *fields)


@dataclass(frozen=True)
class Vouch:
    """What Redis said about a request: its rate-limit allowance (None: not counted) and the
    state an entry must match to be trusted."""

    allowance: Allowance | None
    lineage: str | None  # None: the server's run_id could not be read (INFO renamed): no trust
    stamp: str | None


async def check(
    *,
    redis: Redis,
    keys: Keys,
    settings: Settings,
    rate: Rate | None,
    rate_key: str,
    user_id: uuid.UUID | None,
) -> Vouch:
    """One round trip: count the request at `rate` (None: rate limits are off) and read the
    lineage and the user's stamp (when the user is known)."""
    if rate is None:
        interval, window = 0, 0
    else:
        window = rate.window_seconds * 1_000_000
        interval = max(window // rate.quota, 1)
    field = stamp_field(settings, user_id) if user_id else ""
    args = (rate_key, stamps_key(keys), interval, window, field)
    try:
        reply = await redis.evalsha(_CHECK_SHA, 2, *args)
    except NoScriptError:  # first use on this server (or after SCRIPT FLUSH): load it
        reply = await redis.eval(_CHECK, 2, *args)
    allowed, remaining, micros, lineage, stamp = reply
    allowance = None
    if rate is not None:
        allowance = Allowance(
            rate=rate,
            allowed=bool(allowed),
            remaining=int(remaining),
            reset_seconds=max(math.ceil(int(micros) / 1_000_000), 0 if allowed else 1),
        )
    return Vouch(
        allowance=allowance,
        lineage=_text(lineage) if lineage else None,
        stamp=_text(stamp) if stamp else None,
    )


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
    lineage: str | None
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
            lineage=vouch.lineage if vouch else None,
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
        and vouch.lineage is not None
        and entry.lineage == vouch.lineage
        and entry.stamp == vouch.stamp
    )
