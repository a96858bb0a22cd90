"""Circuit breakers shared through Redis (BREAKER_SHARING=redis): two registries with their own
Redis clients stand for two processes (and one test uses a real second process). Real Redis;
"Redis down" is a TCP proxy in front of it, cut and restored."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from taskloom.breakers import BREAKERS, Breaker, Breakers, BreakerState, CircuitOpen
from taskloom.config import BreakerSharing, Settings
from taskloom.redis import Keys, create_redis, purge_matching
from taskloom.shared_breakers import FORGET_SECONDS, RedisBreakers, SharedBreaker
from tests.in_process import opened_runtime
from tests.redis_cluster import cluster_settings
from tests.tcp_proxy import TcpProxy

RESET = 0.3


def _settings(redis_url: str) -> Settings:
    return Settings(
        _env_file=None,
        taskloom_env="test",
        redis_url=redis_url,
        redis_connect_timeout_seconds=0.5,
        **cluster_settings(redis_url),  # TEST_REDIS_CLUSTER=1: the session's Cluster
    )


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"test-breakers-{uuid.uuid4().hex[:8]}:"
    yield prefix
    redis = create_redis(_settings(redis_url))
    await purge_matching(redis, Keys(prefix).pattern)
    await redis.aclose()


@asynccontextmanager
async def _process(
    redis_url: str, prefix: str, *, cache_seconds: float = 0.0, retry_seconds: float = 5.0
) -> AsyncIterator[tuple[Breakers, Redis]]:
    """What one process has: its own Redis client and its registry over the shared store."""
    redis = create_redis(_settings(redis_url))
    await redis.ping()  # connected, as a runtime's client is (a Cluster's maps its slots first)
    store = RedisBreakers(
        redis, Keys(prefix), cache_seconds=cache_seconds, retry_seconds=retry_seconds
    )
    try:
        yield Breakers(store), redis
    finally:
        await redis.aclose()


async def _keys(redis: Redis, prefix: str) -> list[str]:
    """The prefix's keys (SCAN: on a Cluster, every node's)."""
    return [str(key) async for key in redis.scan_iter(match=f"{prefix}*")]


def _get(breakers: Breakers, name: str, threshold: int = 3) -> Breaker:
    return breakers.get(name, failure_threshold=threshold, reset_seconds=RESET)


async def _allowed(breaker: Breaker) -> bool:
    try:
        await breaker.before_call()
    except CircuitOpen:
        return False
    return True


async def test_failures_in_one_process_open_the_breaker_for_the_other(
    redis_url: str, prefix: str
) -> None:
    name = f"tool:{uuid.uuid4()}"
    async with _process(redis_url, prefix) as (one, _), _process(redis_url, prefix) as (two, _):
        a, b = _get(one, name), _get(two, name)
        assert await _allowed(a)
        assert await _allowed(b)
        await a.record_failure()
        await a.record_failure()
        assert a.state is BreakerState.CLOSED
        assert a.failures == 2
        await b.record_failure()  # the third failure in a row, counted across both
        assert b.state is BreakerState.OPEN
        with pytest.raises(CircuitOpen) as refused:
            await a.before_call()
        assert 0 < refused.value.retry_in <= RESET
        assert a.state is BreakerState.OPEN
        assert a.failures == 3
        assert not await _allowed(b)


async def test_a_success_anywhere_ends_the_run_of_failures(redis_url: str, prefix: str) -> None:
    name = f"tool:{uuid.uuid4()}"
    async with _process(redis_url, prefix) as (one, _), _process(redis_url, prefix) as (two, _):
        a, b = _get(one, name), _get(two, name)
        await a.record_failure()
        await a.record_failure()
        assert await _allowed(b)  # b hears of the two failures
        await b.record_success()
        await a.record_failure()
        assert a.state is BreakerState.CLOSED
        assert a.failures == 1


async def test_half_open_lets_one_trial_through_across_processes_and_its_success_closes_both(
    redis_url: str, prefix: str
) -> None:
    name = f"ai:{uuid.uuid4()}"
    async with _process(redis_url, prefix) as (one, _), _process(redis_url, prefix) as (two, _):
        a, b = _get(one, name, threshold=1), _get(two, name, threshold=1)
        await a.record_failure()
        assert not await _allowed(b)
        await asyncio.sleep(RESET + 0.05)

        # Twenty callers at once, ten in each process: one trial.
        allowed = await asyncio.gather(*(_allowed(x) for x in [a, b] * 10))
        assert sum(allowed) == 1
        trial, other = (a, b) if allowed[0] else (b, a)
        assert not await _allowed(other)
        assert not await _allowed(trial)
        assert other.state is BreakerState.HALF_OPEN

        await trial.record_success()
        assert await _allowed(other)
        assert await _allowed(trial)
        assert other.state is BreakerState.CLOSED
        assert other.failures == 0


async def test_a_failed_trial_opens_the_breaker_again_for_both(redis_url: str, prefix: str) -> None:
    name = f"ai:{uuid.uuid4()}"
    async with _process(redis_url, prefix) as (one, _), _process(redis_url, prefix) as (two, _):
        a, b = _get(one, name, threshold=1), _get(two, name, threshold=1)
        await a.record_failure()
        await asyncio.sleep(RESET + 0.05)
        assert await _allowed(b)  # b's call is the trial
        await b.record_failure()
        assert not await _allowed(a)
        assert a.state is BreakerState.OPEN
        await asyncio.sleep(RESET + 0.05)
        assert await _allowed(a)  # a new trial once the reset time has passed again


async def test_an_abandoned_trial_lets_the_other_process_make_it(
    redis_url: str, prefix: str
) -> None:
    name = f"tool:{uuid.uuid4()}"
    async with _process(redis_url, prefix) as (one, _), _process(redis_url, prefix) as (two, _):
        a, b = _get(one, name, threshold=1), _get(two, name, threshold=1)
        await a.record_failure()
        await asyncio.sleep(RESET + 0.05)
        assert await _allowed(a)
        assert not await _allowed(b)
        await a.abandon_trial()  # cancelled: no verdict on the provider
        assert await _allowed(b)


async def test_state_lives_in_one_key_under_the_prefix_with_a_ttl_and_a_success_deletes_it(
    redis_url: str, prefix: str
) -> None:
    name = f"tool:{uuid.uuid4()}"
    async with _process(redis_url, prefix) as (one, redis):
        a = _get(one, name)
        assert await _allowed(a)
        assert await _keys(redis, prefix) == []  # closed without failures: no key at all
        await a.record_failure()
        key = f"{prefix}breaker:{name}"
        assert await _keys(redis, prefix) == [key]
        assert 0 < await redis.pttl(key) <= FORGET_SECONDS * 1000
        for _ in range(2):
            await a.record_failure()
        assert 0 < await redis.pttl(key) <= (FORGET_SECONDS + RESET) * 1000
        await asyncio.sleep(RESET + 0.05)
        assert await _allowed(a)  # the trial's lease is in the same key
        assert await _keys(redis, prefix) == [key]
        assert 0 < await redis.pttl(key) <= (FORGET_SECONDS + RESET) * 1000
        await a.record_success()
        assert await _keys(redis, prefix) == []


async def test_resetting_a_breaker_closes_it_for_every_process(redis_url: str, prefix: str) -> None:
    name = f"tool:{uuid.uuid4()}"
    async with _process(redis_url, prefix) as (one, _), _process(redis_url, prefix) as (two, _):
        await _get(one, name, threshold=1).record_failure()
        assert not await _allowed(_get(two, name, threshold=1))
        await one.reset(name)  # new credentials (tools/routes.py)
        assert await _allowed(_get(one, name, threshold=1))
        # The other process trusts the open state it saw until its time is up, then finds the
        # breaker closed: every call goes through, not one trial.
        await asyncio.sleep(RESET + 0.05)
        other = _get(two, name, threshold=1)
        assert await _allowed(other)
        assert await _allowed(other)
        assert other.state is BreakerState.CLOSED


@pytest.fixture
def proxy(redis_url: str) -> Iterator[TcpProxy]:
    if cluster_settings(redis_url):
        pytest.skip("a Cluster client finds the nodes' own addresses: no proxy stands between")
    parts = urlsplit(redis_url)
    target: tuple[str, int] | str = (
        parts.path if parts.scheme == "unix" else (parts.hostname or "", parts.port or 6379)
    )
    tcp = TcpProxy(target)
    yield tcp
    tcp.close()


def _through(proxy: TcpProxy, redis_url: str) -> str:
    db = urlsplit(redis_url).path.strip("/") if urlsplit(redis_url).scheme != "unix" else ""
    return f"redis://127.0.0.1:{proxy.port}/{db or 0}"


async def test_redis_down_falls_back_to_the_process_breaker_visibly_and_recovers(
    redis_url: str,
    prefix: str,
    proxy: TcpProxy,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    name = f"tool:{uuid.uuid4()}"
    async with (
        _process(_through(proxy, redis_url), prefix, retry_seconds=0.5) as (one, _),
        _process(redis_url, prefix) as (two, _),
    ):
        a = _get(one, name, threshold=2)
        await a.record_failure()
        assert a.failures == 1

        proxy.cut()
        started = time.monotonic()
        assert await _allowed(a)  # calls go on: Redis being down never blocks them
        assert time.monotonic() - started < 1.5
        assert REGISTRY.get_sample_value("circuit_breaker_sharing_degraded") == 1
        assert [e for e in captured_logs if e["event"] == "breaker_sharing_unavailable"]
        # This process's own breaker decides meanwhile, quickly: no Redis attempt per call.
        started = time.monotonic()
        await a.record_failure()
        await a.record_failure()
        assert time.monotonic() - started < 0.1
        assert a.state is BreakerState.OPEN
        assert not await _allowed(a)
        assert await _allowed(_get(two, name, threshold=2))  # only one failure was shared

        proxy.restore()
        await asyncio.sleep(0.6)  # past retry_seconds: Redis is asked again
        assert await _allowed(a)  # the shared breaker is closed (one failure)
        assert a.state is BreakerState.CLOSED
        assert a.failures == 1
        assert REGISTRY.get_sample_value("circuit_breaker_sharing_degraded") == 0
        assert [e for e in captured_logs if e["event"] == "breaker_sharing_restored"]
        await _get(two, name, threshold=2).record_failure()  # shared again: two in a row
        assert not await _allowed(a)


_OTHER_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from taskloom.breakers import Breakers
    from taskloom.config import Settings
    from taskloom.redis import Keys, create_redis
    from taskloom.shared_breakers import RedisBreakers

    async def main(url, prefix, name, nodes=""):
        settings = Settings(
            _env_file=None,
            taskloom_env="test",
            redis_url=url,
            redis_cluster=bool(nodes),
            redis_cluster_nodes=nodes or None,
        )
        redis = create_redis(settings)
        breaker = Breakers(RedisBreakers(redis, Keys(prefix))).get(
            name, failure_threshold=3, reset_seconds=30
        )
        for _ in range(3):
            await breaker.before_call()
            await breaker.record_failure()
        print(int(breaker.state))
        await redis.aclose()

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_a_breaker_opened_by_another_os_process_refuses_calls_here(
    redis_url: str, prefix: str
) -> None:
    name = f"ai:instance:{uuid.uuid4()}"
    async with _process(redis_url, prefix, cache_seconds=0.2) as (here, _):
        breaker = _get(here, name)
        assert await _allowed(breaker)  # closed, trusted for 0.2 s
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-c",
                _OTHER_PROCESS,
                redis_url,
                prefix,
                name,
                cluster_settings(redis_url).get("redis_cluster_nodes", ""),
            ],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(int(BreakerState.OPEN))
        await asyncio.sleep(0.25)
        with pytest.raises(CircuitOpen) as refused:
            await breaker.before_call()
        assert 25 < refused.value.retry_in <= 30
        assert breaker.state is BreakerState.OPEN


async def test_breaker_sharing_redis_makes_the_runtime_share_the_process_breakers(
    settings: Settings,
) -> None:
    shared = settings.model_copy(update={"breaker_sharing": BreakerSharing.REDIS})
    name = f"tool:{uuid.uuid4()}"
    async with opened_runtime(shared) as runtime:
        breaker = BREAKERS.get(name, failure_threshold=1, reset_seconds=60)
        assert isinstance(breaker, SharedBreaker)
        await breaker.record_failure()
        key = runtime.keys("breaker", name)
        assert key.startswith(settings.key_prefix)
        assert await runtime.redis.hget(key, "f") == "1"
        await BREAKERS.reset(name)
        assert await runtime.redis.exists(key) == 0
    assert BREAKERS.store is None  # closed: back to this process's own breakers
    assert not isinstance(BREAKERS.get(name), SharedBreaker)
    BREAKERS.remove(name)
