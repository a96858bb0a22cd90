"""Two environments on one Redis: every key carries its environment's prefix, and neither sees
the other's keys or jobs. Runs on a database of the test's own TLS redis-server, so SCAN shows
exactly what the two environments wrote."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bullmq import Queue, Worker
from redis.crc import key_slot
from redis.exceptions import NoPermissionError

from taskloom.app import create_app
from taskloom.config import Settings
from taskloom.redis import Cache, Keys, bullmq_options, connect_redis
from taskloom.runtime import Runtime, open_runtime
from tests.factories import register
from tests.redis.conftest import RedisServer

ISOLATION_DB = 5
ENVIRONMENTS = ("staging:", "production:")


@pytest.fixture
async def environments(
    secure_redis: RedisServer, settings: Settings
) -> AsyncIterator[dict[str, Runtime]]:
    """Two runtimes sharing the test database and one Redis database, prefixes differing."""
    url = secure_redis.url().rsplit("/", 1)[0] + f"/{ISOLATION_DB}"
    base = secure_redis.settings(redis_url=url)
    runtimes: dict[str, Runtime] = {}
    for prefix in ENVIRONMENTS:
        env_settings = settings.model_copy(
            update={
                name: getattr(base, name)
                for name in ("redis_url", "redis_tls_ca_file", "redis_password")
            }
            | {"redis_key_prefix": prefix}
        )
        runtimes[prefix] = await open_runtime(env_settings)
    await runtimes["staging:"].redis.flushdb()
    yield runtimes
    await runtimes["staging:"].redis.flushdb()
    for runtime in runtimes.values():
        await runtime.close()


async def _exercise_sessions_and_rate_limits(runtime: Runtime) -> None:
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app, client=("198.51.100.9", 40000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        account = await register(client, label="env", organization_name="Env Org")
        bad = await client.post("/auth/login", json={"email": account.email, "password": "nope-x"})
        assert bad.status_code == 401
        good = await client.post(
            "/auth/login", json={"email": account.email, "password": account.password}
        )
        assert good.status_code == 200
        refreshed = await client.post(
            "/auth/refresh", json={"refresh_token": good.json()["refresh_token"]}
        )
        assert refreshed.status_code == 200
        out = await client.post(
            "/auth/logout", headers={"Authorization": f"Bearer {refreshed.json()['access_token']}"}
        )
        assert out.status_code == 204


async def _run_queue(settings: Settings, *, enqueue_only: bool = False) -> list[str]:
    """Enqueue one job on the shared queue name; unless `enqueue_only`, run a worker until the
    queue is empty and return the ids of the jobs it processed."""
    queue = Queue("workflows", bullmq_options(settings))
    processed: list[str] = []
    try:
        await queue.add("run", {"env": settings.key_prefix})
        if enqueue_only:
            return processed
        drained = asyncio.Event()

        async def process(job: Any, token: str) -> str:
            assert job.data["env"] == settings.key_prefix
            processed.append(job.id)
            if (await queue.getJobCountByTypes("waiting", "active")) <= 1:
                drained.set()
            return settings.key_prefix

        worker = Worker("workflows", process, bullmq_options(settings, purpose="worker"))
        try:
            await asyncio.wait_for(drained.wait(), 15)
        finally:
            await asyncio.wait_for(worker.close(), 15)
    finally:
        await queue.close()
    return processed


async def test_two_environments_share_one_redis_without_seeing_each_other(
    environments: dict[str, Runtime],
) -> None:
    staging, production = environments["staging:"], environments["production:"]
    for runtime in (staging, production):
        await _exercise_sessions_and_rate_limits(runtime)
        cache = Cache(runtime.redis, runtime.keys, "tools")
        await cache.set(
            "org:1", "notion.search {'q': 'roadmap'}", {"env": runtime.keys.prefix}, ttl_seconds=60
        )

    # The same cache entry name holds each environment's own value, and a purge stays home.
    staging_cache = Cache(staging.redis, staging.keys, "tools")
    production_cache = Cache(production.redis, production.keys, "tools")
    assert await staging_cache.get("org:1", "notion.search {'q': 'roadmap'}") == {"env": "staging:"}
    assert await staging_cache.purge("org:1") == 1
    assert await staging_cache.get("org:1", "notion.search {'q': 'roadmap'}") is None
    assert await production_cache.get("org:1", "notion.search {'q': 'roadmap'}") == {
        "env": "production:"
    }

    # A staging worker takes only staging's job; production's waits for a production worker.
    await _run_queue(production.settings, enqueue_only=True)
    assert len(await _run_queue(staging.settings)) == 1
    production_queue = Queue("workflows", bullmq_options(production.settings))
    try:
        assert await production_queue.getJobCountByTypes("waiting") == 1
    finally:
        await production_queue.close()
    assert len(await _run_queue(production.settings)) == 2

    keys = [key async for key in staging.redis.scan_iter(count=1000)]
    assert keys, "the environments wrote nothing"
    strays = [key for key in keys if not key.startswith(ENVIRONMENTS)]
    assert strays == []
    for prefix in ENVIRONMENTS:
        mine = [key for key in keys if key.startswith(prefix)]
        assert any(key.startswith(f"{prefix}ratelimit:login:") for key in mine), mine
        assert any(key.startswith(f"{prefix}bull:workflows:") for key in mine), mine
    assert [key for key in keys if ":cache:" in key] == [
        key for key in keys if key.startswith("production:cache:tools:org:1:")
    ]  # staging's entry was purged, production's is untouched


async def test_cluster_hash_tag_prefix_keeps_every_key_in_one_slot(
    secure_redis: RedisServer,
) -> None:
    settings = secure_redis.settings(redis_key_prefix="{production}:")
    assert settings.bullmq_prefix == "{production}:bull"
    name = f"tagged-{secrets.token_hex(3)}"
    queue = Queue(name, bullmq_options(settings))
    client = await connect_redis(settings)
    try:
        job = await queue.add("run", {})
        keys = Keys(settings.key_prefix)
        await client.set(keys("probe"), "1", ex=60)
        written = [k async for k in client.scan_iter(match=keys.match(), count=1000)]
        assert f"{{production}}:bull:{name}:{job.id}" in written
        slots = {key_slot(key.encode()) for key in written}  # Cluster's CRC16 slot
        assert len(slots) == 1  # one hash tag: one slot, so multi-key scripts work on Cluster
    finally:
        await queue.obliterate(force=True)
        await queue.close()
        await client.delete(Keys(settings.key_prefix)("probe"))
        await client.aclose()


# The ACL docs/REDIS.md recommends for a Taskloom environment (a test keeps the two in step).
ACL_RULES = "on >{password} ~staging:* resetchannels +@all -@dangerous +info +client|setname"


def test_the_docs_recommend_the_tested_acl() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "REDIS.md").read_text()
    assert ACL_RULES.replace("{password}", "<password>") in docs


async def test_an_acl_user_confined_to_its_prefix_runs_everything_and_nothing_else(
    secure_redis: RedisServer,
) -> None:
    admin = await connect_redis(secure_redis.settings())
    user, password = f"staging-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    await admin.execute_command(
        "ACL", "SETUSER", user, *ACL_RULES.format(password=password).split()
    )
    settings = secure_redis.settings(
        redis_username=user, redis_password=password, redis_key_prefix="staging:"
    )
    client = await connect_redis(settings)
    name = f"acl-{secrets.token_hex(3)}"
    queue = Queue(name, bullmq_options(settings))
    try:
        cache = Cache(client, Keys(settings.key_prefix), "tools")
        await cache.set("org:1", "search", {"hits": 3}, ttl_seconds=60)
        assert await cache.get("org:1", "search") == {"hits": 3}
        assert await cache.purge("org:1") == 1

        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def process(job: Any, token: str) -> int:
            return int(job.data["n"]) + 1

        worker = Worker(name, process, bullmq_options(settings, purpose="worker"))
        worker.on("completed", lambda job, result: done.done() or done.set_result(result))
        try:
            await queue.add("inc", {"n": 1}, {"delay": 50, "attempts": 2})
            assert await asyncio.wait_for(done, 15) == 2
        finally:
            await asyncio.wait_for(worker.close(), 15)

        await admin.set("production:secret", "not for staging", ex=60)
        with pytest.raises(NoPermissionError):
            await client.get("production:secret")
        with pytest.raises(NoPermissionError):
            await client.flushdb()
    finally:
        await queue.obliterate(force=True)
        await queue.close()
        await client.aclose()
        await admin.delete("production:secret")
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()
