"""Every Redis key (`Keys`), a small JSON cache over them, and purges by pattern."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from taskloom.config import Settings


class Keys:
    """Builds every Redis key: `<prefix><part>:<part>…`, e.g. `production:ratelimit:login:…`.

    `spread`: the keys spread over a Redis Cluster's slots (REDIS_CLUSTER=true, a prefix that is
    no hash tag), so keys used together must say so (`together`, `tagged`)."""

    def __init__(self, prefix: str, *, spread: bool = False) -> None:
        self.prefix = prefix
        self.spread = spread

    @classmethod
    def of(cls, settings: Settings) -> Keys:
        """The deployment's keys: its prefix, spread over the slots under Redis Cluster."""
        return cls(settings.key_prefix, spread=settings.redis_spreads_keys)

    def __call__(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def together(self, group: str, *parts: str) -> str:
        """A key that one script, transaction or multi-key command uses with the other keys of
        `group`. Spread over a Cluster it ends in the group's hash tag,
        `<prefix><part>…:{<prefix><group>}`, so the group shares a slot and the key still
        matches the patterns of `match(<part>…)` (purges); otherwise it is the plain
        `<prefix><part>…`, so one server's (and a `{production}:` prefix's) keys stay as
        they were."""
        key = self(*parts)
        return f"{key}:{{{self.prefix}{group}}}" if self.spread else key

    def tagged(self, name: str) -> str:
        """`<prefix>{<prefix><name>}`: a base for keys one Lua script touches together. They
        share the hash tag, so a Redis Cluster keeps them in one slot, and they still start
        with the prefix (ACL key patterns, SCAN purges). A prefix that is itself a hash tag
        (`{production}:`) wins, as for every other key."""
        return f"{self.prefix}{{{self.prefix}{name}}}"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this deployment."""
        return self.match()

    def match(self, *parts: str) -> str:
        """A SCAN pattern for every key under `parts` (the prefix holds no glob characters)."""
        return self(*parts, "*") if parts else self.prefix + "*"


@dataclass(frozen=True)
class Cache:
    """JSON values with a TTL under `<prefix>cache:<namespace>:<scope>:<sha256 of key>`.

    `scope` names whose data an entry holds (`org:<uuid>` or `user:<uuid>`), so one call purges
    an organization's or a person's cached data (GDPR erasure, revoked connections). Keys are
    hashed: cached arguments may be personal data and key names show up in monitoring tools.
    """

    redis: Redis
    keys: Keys
    namespace: str

    def _key(self, scope: str, key: str) -> str:
        return self.keys("cache", self.namespace, scope, hashlib.sha256(key.encode()).hexdigest())

    async def get(self, scope: str, key: str) -> Any | None:
        raw = await self.redis.get(self._key(scope, key))
        return None if raw is None else json.loads(raw)

    async def set(self, scope: str, key: str, value: Any, *, ttl_seconds: int) -> None:
        await self.redis.set(self._key(scope, key), json.dumps(value), ex=ttl_seconds)

    async def purge(self, scope: str) -> int:
        """Delete every entry of `scope` in this namespace; returns how many were removed."""
        return await purge_matching(self.redis, self.keys.match("cache", self.namespace, scope))


async def purge_matching(redis: Redis, pattern: str) -> int:
    """UNLINK every key matching a `Keys.match` pattern (SCAN, so the server never blocks)."""
    removed = 0
    batch: list[str] = []
    async for key in redis.scan_iter(match=pattern, count=500):
        batch.append(key)
        if len(batch) >= 500:
            removed += await redis.unlink(*batch)
            batch.clear()
    if batch:
        removed += await redis.unlink(*batch)
    return removed


def redis_info_summary(info: Mapping[str, Any]) -> dict[str, Any]:
    """The few INFO fields worth showing an operator (version, memory, eviction policy)."""
    return {
        "version": info.get("redis_version"),
        "used_memory_human": info.get("used_memory_human"),
        "maxmemory_policy": info.get("maxmemory_policy"),
    }
