"""The principal cache fails closed: when Redis is down, restarted, flushed or cannot say who it
is, requests are authenticated by PostgreSQL as without the cache; and a cached principal never
serves another organization.

A Redis server of the test's own (nothing on disk) lets it be stopped and restarted. A session
revoked in the database *without* publishing stands for a revocation whose stamp Redis lost:
the cache must not answer for it once Redis may have lost anything.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from taskloom.auth.models import Session
from taskloom.auth.principal import Principal
from taskloom.auth.principal_cache import PrincipalCache, Vouch, bump, stamps_key
from taskloom.config import Settings
from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from tests.factories import Account, register
from tests.in_process import asgi_client, opened_runtime, running_app
from tests.servers import free_port, plain_redis_config, start_redis
from tests.workers import create_workflow

STEPS = [{"id": "a", "type": "transform", "args": {"value": 1}}]


@dataclass
class OwnRedis:
    """A redis-server of this test's own, which it may stop and start again."""

    directory: Path
    port: int
    extra: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        config = [*plain_redis_config(self.directory, self.port), *self.extra]
        self.process = start_redis(self.directory, config, self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def _own_redis(extra: list[str]) -> Iterator[OwnRedis]:
    with tempfile.TemporaryDirectory(prefix="tl-redis-cache-") as directory:
        server = OwnRedis(Path(directory), free_port(), extra)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    yield from _own_redis([])


@dataclass
class Api:
    client: httpx.AsyncClient
    runtime: Runtime


@pytest.fixture
async def api(settings: Settings, own_redis: OwnRedis) -> AsyncIterator[Api]:
    """An API process on the shared database and the test's own Redis, rate limits off (with
    them on, a request that cannot be counted fails with 503, as it always has)."""
    async with _api(settings, own_redis) as opened:
        yield opened


@asynccontextmanager
async def _api(settings: Settings, redis: OwnRedis) -> AsyncIterator[Api]:
    own = settings.model_copy(
        update={
            "redis_url": redis.url,
            "rate_limits_enabled": False,
            # one server, also when the session's deployments use a Cluster
            "redis_cluster": False,
            "redis_cluster_nodes": None,
        }
    )
    async with (
        opened_runtime(own) as runtime,
        running_app(runtime) as app,
        asgi_client(app, ip="203.0.113.9") as client,
    ):
        yield Api(client, runtime)


async def _warm(api: Api, account: Account) -> None:
    for _ in range(2):
        assert (await api.client.get("/auth/me", headers=account.headers)).status_code == 200
    entry = api.runtime.principals.get(PrincipalCache.digest(account.access_token))
    assert entry is not None
    assert entry.principal is not None


async def _revoke_unpublished(runtime: Runtime, account: Account) -> None:
    """Revoke the session as if its stamp had been lost with Redis's data."""
    async with system_transaction(runtime.database) as db:
        await db.execute(
            update(Session)
            .where(Session.user_id == account.user_id)
            .values(revoked_at=datetime.now(UTC), revoked_reason="logout")
        )


async def _status(api: Api, account: Account) -> int:
    return (await api.client.get("/auth/me", headers=account.headers)).status_code


async def test_with_redis_down_requests_are_authenticated_by_postgresql(
    api: Api, own_redis: OwnRedis
) -> None:
    alive = await register(api.client, label="redisdown")
    revoked = await register(api.client, label="redisdown2")
    await _warm(api, alive)
    await _warm(api, revoked)
    own_redis.stop()
    await _revoke_unpublished(api.runtime, revoked)
    me = await api.client.get("/auth/me", headers=alive.headers)
    assert me.status_code == 200
    assert me.json()["user"]["id"] == str(alive.user_id)
    refused = await api.client.get("/auth/me", headers=revoked.headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "session_revoked"


async def test_a_redis_restart_without_persistence_distrusts_every_entry(
    api: Api, own_redis: OwnRedis
) -> None:
    account = await register(api.client, label="restart")
    await _warm(api, account)
    own_redis.stop()
    own_redis.start()  # a new run_id, and nothing kept
    await _revoke_unpublished(api.runtime, account)
    assert await _status(api, account) == 401


async def test_a_redis_restart_from_an_older_snapshot_distrusts_every_entry(
    api: Api, own_redis: OwnRedis
) -> None:
    """The snapshot holds the stamps hash and its epoch as they were; only the new run_id says
    that increments since may be lost."""
    account = await register(api.client, label="snapshot")
    await _warm(api, account)
    await api.runtime.redis.save()
    own_redis.stop()
    own_redis.start()  # loads dump.rdb: the same epoch
    await _revoke_unpublished(api.runtime, account)
    assert await _status(api, account) == 401


async def test_a_lost_stamps_hash_distrusts_every_entry(api: Api) -> None:
    account = await register(api.client, label="flushed")
    await _warm(api, account)
    # The hash is gone (FLUSHALL, eviction, a deleted key): increments may be gone with it.
    await api.runtime.redis.delete(stamps_key(api.runtime.keys))
    await _revoke_unpublished(api.runtime, account)
    assert await _status(api, account) == 401


async def test_a_failed_revocation_publish_empties_this_process_cache(
    api: Api, own_redis: OwnRedis
) -> None:
    account = await register(api.client, label="nopublish")
    await _warm(api, account)
    own_redis.stop()
    assert (await api.client.post("/auth/logout", headers=account.headers)).status_code == 204
    assert len(api.runtime.principals) == 0
    own_redis.start()
    assert await _status(api, account) == 401


async def test_without_info_no_entry_is_trusted(settings: Settings) -> None:
    for server in _own_redis(['rename-command INFO ""']):
        async with _api(settings, server) as api:
            account = await register(api.client, label="noinfo")
            for _ in range(2):
                assert await _status(api, account) == 200
            await _revoke_unpublished(api.runtime, account)
            assert await _status(api, account) == 401


async def test_a_cached_principal_of_one_organization_never_serves_another(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await register(client, label="twoorgs")
    created = await client.post("/api/orgs", json={"name": "Org B"}, headers=owner.headers)
    org_b = created.json()["id"]
    switched = await client.post("/auth/switch-org", json={"org_id": org_b}, headers=owner.headers)
    in_b = Account(**{**owner.__dict__, "access_token": switched.json()["access_token"]})
    secret_b = await create_workflow(client, in_b, STEPS, name="only-in-b")
    # A second sign-in in org A, and an API key of org A, both cached.
    signed_in_a = await client.post(
        "/auth/login",
        json={"email": owner.email, "password": owner.password, "org_id": str(owner.org_id)},
    )
    in_a = Account(**{**owner.__dict__, "access_token": signed_in_a.json()["access_token"]})
    key_a = await client.post("/auth/api-keys", json={"name": "a"}, headers=in_a.headers)
    mine_a = await create_workflow(client, in_a, STEPS, name="in-a")
    for token in (in_a.access_token, key_a.json()["key"]):
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(3):  # the third is answered from the cache
            listed = await client.get("/api/workflows", headers=headers)
            assert listed.status_code == 200
            assert {w["id"] for w in listed.json()} == {mine_a}
            assert (
                await client.get(f"/api/workflows/{secret_b}", headers=headers)
            ).status_code == 404
        entry = runtime.principals.get(PrincipalCache.digest(token))
        assert entry is not None
        assert entry.principal is not None
        assert entry.principal.org_id == owner.org_id


def test_the_cache_is_bounded_and_entries_expire() -> None:
    cache = PrincipalCache(size=2, ttl_seconds=0.2)
    vouch = Vouch(allowance=None, lineage="run/epoch", stamp=None)
    digests = [PrincipalCache.digest(f"token-{i}") for i in range(3)]
    for digest in digests:
        user = uuid.uuid4()
        principal = Principal(user_id=user, org_id=None, role=None, kind="session")
        cache.put(digest, user_id=user, org_id=None, principal=principal, vouch=vouch, expires=1e12)
    assert len(cache) == 2
    assert cache.get(digests[0]) is None  # the least recently used went first
    assert cache.get(digests[2]) is not None
    time.sleep(0.25)
    assert cache.get(digests[2]) is None


async def test_stamps_never_expire_one_by_one(api: Api) -> None:
    """A stamp can only go back with the whole hash (and its epoch), never on its own."""
    await bump(
        redis=api.runtime.redis,
        keys=api.runtime.keys,
        settings=api.runtime.settings,
        user_ids={uuid.uuid4()},
    )
    assert await api.runtime.redis.ttl(stamps_key(api.runtime.keys)) == -1
