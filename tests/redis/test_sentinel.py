"""Redis Sentinel: the settings, what start-up says when the Sentinels cannot name a master, and
clients that follow a failover by themselves, against a primary, a replica and three Sentinels
started on loopback ports (tests/servers.py). The failover under load, with executions running,
is at the end (its longer version: bench/sentinel_failover.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.sentinel_failover import Plan, run_failover, summary
from bullmq import Queue
from pydantic import ValidationError

from taskloom.config import InsecureConfiguration, Settings
from taskloom.redis import RedisConnectError, bullmq_options, connect_redis, describe_target
from tests.factories import production_settings
from tests.servers import SentinelGroup, free_port, start_redis

SENTINEL_SECRET = "sentinel-Pa55"


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    servers = SentinelGroup(tmp_path_factory.mktemp("sentinel"))
    try:
        servers.wait_ready()
        yield servers
    finally:
        servers.close()


def _settings(group: SentinelGroup, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "taskloom_env": "test",
        "redis_sentinels": group.addresses,
        "redis_sentinel_master": group.name,
        "redis_key_prefix": "sentinel-test:",
        **overrides,
    }
    return Settings(_env_file=None, **values)


# --- settings ----------------------------------------------------------------------------------


def test_redis_url_and_sentinels_are_one_or_the_other() -> None:
    with pytest.raises(ValidationError, match=r"REDIS_URL .* or REDIS_SENTINELS .*not both"):
        Settings(
            _env_file=None,
            redis_url="redis://127.0.0.1:6379/0",
            redis_sentinels="127.0.0.1:26379",
            redis_sentinel_master="taskloom",
        )
    with pytest.raises(ValidationError, match="REDIS_SENTINELS and REDIS_SENTINEL_MASTER"):
        Settings(_env_file=None, redis_sentinels="127.0.0.1:26379")


@pytest.mark.parametrize("entry", ["cache:0", "cache:port", "cache:70000", "cache:1/x"])
def test_a_bad_sentinel_address_is_named(entry: str) -> None:
    with pytest.raises(ValidationError, match=f"REDIS_SENTINELS entry 2 \\('{entry}'\\)"):
        Settings(
            _env_file=None,
            redis_sentinels=f"10.0.0.1:26379,{entry}",
            redis_sentinel_master="taskloom",
        )


def test_a_sentinel_address_with_credentials_is_refused_without_repeating_them() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(
            _env_file=None,
            redis_sentinels=f"admin:{SENTINEL_SECRET}@10.0.0.1:26379",
            redis_sentinel_master="taskloom",
        )
    message = caught.value.errors()[0]["msg"]  # (pydantic's own summary adds the input)
    assert "REDIS_SENTINEL_PASSWORD" in message
    assert SENTINEL_SECRET not in message


def test_sentinel_addresses_default_to_port_26379() -> None:
    settings = Settings(
        _env_file=None, redis_sentinels="a.internal, [::1]:26380", redis_sentinel_master="m"
    )
    assert settings.redis_sentinel_addresses == [("a.internal", 26379), ("::1", 26380)]
    assert settings.redis_configured
    assert describe_target(settings) == "master 'm' (Sentinels a.internal:26379,[::1]:26380)"


SENTINEL = {"redis_url": None, "redis_sentinel_master": "taskloom", "redis_password": "pw"}


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({**SENTINEL, "redis_sentinels": "10.0.0.1:26379"}, "REDIS_SENTINEL_TLS=true"),
        ({**SENTINEL, "redis_sentinels": "127.0.0.1,cache.internal"}, "REDIS_SENTINEL_TLS=true"),
        (
            {**SENTINEL, "redis_sentinels": "10.0.0.1", "redis_sentinel_tls": True,
             "redis_password": None},
            "no password",
        ),
    ],
)  # fmt: skip
def test_production_rules_apply_to_sentinel(overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(InsecureConfiguration, match=complaint):
        production_settings(**overrides)


def test_production_accepts_sentinels_over_tls_or_on_loopback() -> None:
    tls = production_settings(**SENTINEL, redis_sentinels="10.0.0.1", redis_sentinel_tls=True)
    assert tls.redis_uses_tls
    local = production_settings(**SENTINEL, redis_sentinels="127.0.0.1:26379,localhost:26380")
    assert local.redis_is_local
    assert not local.redis_uses_tls


# --- start-up ----------------------------------------------------------------------------------


async def _refused(settings: Settings) -> RedisConnectError:
    with pytest.raises(RedisConnectError) as caught:
        await asyncio.wait_for(connect_redis(settings), 10)
    return caught.value


async def test_start_up_says_why_the_sentinels_name_no_master(
    group: SentinelGroup, tmp_path: Path
) -> None:
    """At once, not after REDIS_FAILOVER_SECONDS of retries: the Sentinels are asked first."""
    wrong_name = await _refused(_settings(group, redis_sentinel_master="elsewhere"))
    assert wrong_name.cause == "no_master"
    assert "no healthy master named 'elsewhere'" in str(wrong_name)

    nobody = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    unreachable = await _refused(_settings(group, redis_sentinels=nobody))
    assert unreachable.cause == "sentinels_unreachable"
    assert str(unreachable).startswith(f"Redis at master 'taskloom' (Sentinels {nobody}):")

    # A fourth Sentinel, with a password, watching the same master.
    port = free_port()
    guarded = start_redis(
        tmp_path,
        [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {tmp_path}",
            f"requirepass {SENTINEL_SECRET}",
            f"sentinel monitor {group.name} 127.0.0.1 {group.master_port()} 2",
        ],
        port,
        sentinel=True,
    )
    try:
        address = f"127.0.0.1:{port}"
        refused = await _refused(_settings(group, redis_sentinels=address))
        assert refused.cause == "sentinel_auth"
        assert "REDIS_SENTINEL_PASSWORD" in str(refused)
        wrong = await _refused(
            _settings(group, redis_sentinels=address, redis_sentinel_password="wrong")
        )
        assert wrong.cause == "sentinel_auth"
        client = await connect_redis(
            _settings(group, redis_sentinels=address, redis_sentinel_password=SENTINEL_SECRET)
        )
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    finally:
        guarded.kill()
        guarded.wait(timeout=10)


# --- following a failover ----------------------------------------------------------------------


async def test_clients_follow_a_failover_that_demotes_a_live_master(group: SentinelGroup) -> None:
    """SENTINEL FAILOVER turns the master into a replica while it lives: connections to it stay
    open and writes on them answer READONLY, which must send the client to the new master. The
    app client and a BullMQ queue's both carry on, with nothing restarted."""
    settings = _settings(group)
    client = await connect_redis(settings)
    queue = Queue("sentinel-demo", bullmq_options(settings))
    try:
        await client.set(settings.key_prefix + "before", "1")
        await queue.add("demo", {"n": 1})
        old = group.master_port()
        new = group.primary_port if old == group.replica_port else group.replica_port
        with group.client(group.sentinel_ports[0]) as sentinel:
            sentinel.sentinel_failover(group.name)
        await asyncio.to_thread(group.wait_for_promotion, 30, new)
        # The Sentinels turn the old master into a replica about 10 s later (their INFO
        # period); do it now. A write before this lands on the old master, and is lost.
        assert old is not None
        with group.client(old) as old_master:
            old_master.replicaof("127.0.0.1", new)
        await client.set(settings.key_prefix + "after", "2")  # READONLY, then the new master
        await queue.add("demo", {"n": 2})
        with group.client(new) as new_master:
            assert new_master.get(settings.key_prefix + "after") == "2"
            assert new_master.get(settings.key_prefix + "before") == "1"  # replicated
        assert (await queue.getJobCounts("waiting"))["waiting"] == 2
    finally:
        await queue.obliterate(force=True)
        await queue.close()
        await client.aclose()


# --- the failover under load -------------------------------------------------------------------


async def test_no_execution_is_lost_when_the_master_dies_mid_run(
    pg_server_url: str, tmp_path: Path
) -> None:
    """bench/sentinel_failover.py, reduced: 200 executions of a two-step chain on two worker
    processes that reach Redis only through the Sentinels; with 30 % finished the replica is cut
    off and 20 more are submitted (the primary acknowledges their jobs, the replica never
    sees them), the primary gets SIGKILL, 10 more are submitted while there is no master, and
    the Sentinels promote the replica. Every execution must succeed; the jobs the old master
    took with it must be back (the reconciler: PostgreSQL holds the truth); every step called,
    none run again once finished, and every duplicated call explained by the failover."""
    plan = Plan()
    outcome = await run_failover(plan, pg_server_url, tmp_path)
    print(summary(outcome))
    assert outcome.submitted == plan.executions + plan.lagging + plan.during
    assert outcome.counts == {"succeeded": outcome.submitted}, outcome.not_succeeded
    # The old master took acknowledged jobs with it (at least the lagging executions'), and
    # every one was back in Redis and finished.
    assert outcome.lost >= plan.lagging // 2
    assert outcome.lost_back_seconds is not None
    assert outcome.lost_finished_seconds is not None
    assert outcome.reconciled >= 1
    # A failover, not an outage: the clients waited for the new master by themselves.
    assert outcome.promotion_seconds < 10
    assert outcome.pause_seconds < plan.failover_seconds
    assert len(outcome.during_accept_seconds) == plan.during
    assert max(outcome.during_accept_seconds) < plan.failover_seconds
    assert outcome.during_refused == 0  # each answered 202 at the first try
    # As in the chaos benchmark: calls made twice overlap the failover, none is missing, and no
    # finished step ran again.
    assert outcome.missing_calls == []
    assert outcome.called_after_finish == []
    assert outcome.logs.succeeded_twice == []
    assert outcome.duplicates.unexplained == []
