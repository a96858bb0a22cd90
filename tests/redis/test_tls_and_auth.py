"""TLS, passwords and ACL users against a real TLS redis-server (see conftest.py). Every failure
must surface in seconds, with a message that names its cause and no password in it."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest
from bullmq import Queue, Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError

from taskloom.redis import (
    Keys,
    RedisConnectError,
    bullmq_options,
    connect_redis,
    connection_kwargs,
    explain_error,
)
from tests.redis.conftest import (
    ALICE_PASSWORD,
    DEFAULT_PASSWORD,
    READER_PASSWORD,
    RedisServer,
)

FAIL_FAST_SECONDS = 5.0


async def _expect_failure(settings: Any) -> RedisConnectError:
    started = time.monotonic()
    with pytest.raises(RedisConnectError) as caught:
        await connect_redis(settings)
    elapsed = time.monotonic() - started
    assert elapsed < FAIL_FAST_SECONDS, f"took {elapsed:.1f} s to fail"
    for secret in (DEFAULT_PASSWORD, ALICE_PASSWORD, READER_PASSWORD, "wrong-Pa55"):
        assert secret not in str(caught.value)
    return caught.value


async def _set_and_get(settings: Any) -> None:
    client = await connect_redis(settings)
    try:
        keys = Keys(settings.key_prefix)
        await client.set(keys("probe"), "ok", ex=60)
        assert await client.get(keys("probe")) == "ok"
        await client.delete(keys("probe"))
    finally:
        await client.aclose()


async def _process_one_job(settings: Any) -> Any:
    """Enqueue a job and let a worker process it, both on clients from the factory."""
    name = f"tls-{secrets.token_hex(3)}"
    queue = Queue(name, bullmq_options(settings))
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def process(job: Any, token: str) -> dict[str, Any]:
        return {"doubled": job.data["n"] * 2}

    worker = Worker(name, process, bullmq_options(settings, purpose="worker"))
    worker.on("completed", lambda job, result: done.done() or done.set_result(result))
    try:
        job = await queue.add("double", {"n": 21})
        result = await asyncio.wait_for(done, 15)
        assert (await queue.getJobState(job.id)) == "completed"
        return result
    finally:
        await asyncio.wait_for(worker.close(), 15)
        await queue.obliterate(force=True)
        await queue.close()


# --- TLS -----------------------------------------------------------------------------------------


async def test_tls_with_the_ca_file_works_end_to_end(secure_redis: RedisServer) -> None:
    settings = secure_redis.settings()
    await _set_and_get(settings)
    assert await _process_one_job(settings) == {"doubled": 42}


async def test_tls_is_verified_by_default(secure_redis: RedisServer) -> None:
    kwargs = connection_kwargs(secure_redis.settings())
    assert kwargs["ssl"] is True
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_check_hostname"] is True


async def test_tls_without_the_ca_fails_verification(secure_redis: RedisServer) -> None:
    error = await _expect_failure(secure_redis.settings(redis_tls_ca_file=None))
    assert error.cause == "tls_verify"
    assert "certificate verification failed" in str(error)
    assert "REDIS_TLS_CA_FILE" in str(error)


async def test_tls_with_another_ca_fails_verification(secure_redis: RedisServer) -> None:
    error = await _expect_failure(
        secure_redis.settings(redis_tls_ca_file=secure_redis.pki.other_ca)
    )
    assert error.cause == "tls_verify"


async def test_tls_checks_the_host_name(secure_redis: RedisServer) -> None:
    # The certificate names localhost and 127.0.0.1, not 127.0.0.2 (which still reaches it).
    url = secure_redis.url(host="127.0.0.2")
    error = await _expect_failure(secure_redis.settings(redis_url=url))
    assert error.cause == "tls_verify"
    assert "127.0.0.2" in str(error)


async def test_verification_can_be_turned_off_and_it_warns(
    secure_redis: RedisServer, captured_logs: list[dict[str, Any]]
) -> None:
    settings = secure_redis.settings(redis_tls_ca_file=None, redis_tls_verify=False)
    await _set_and_get(settings)
    logs = captured_logs
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["redis tls verification disabled"]
    connected = next(e for e in logs if e["event"] == "redis connected")
    assert connected["tls"] is True
    assert connected["verify"] is False


async def test_plaintext_client_to_the_tls_port_fails_clearly(secure_redis: RedisServer) -> None:
    error = await _expect_failure(
        secure_redis.settings(redis_url=secure_redis.url(scheme="redis"), redis_tls_ca_file=None)
    )
    assert error.cause in {"closed", "timeout"}
    assert "rediss://" in str(error)


async def test_connection_refused_is_named(secure_redis: RedisServer) -> None:
    error = await _expect_failure(secure_redis.settings(redis_url="rediss://127.0.0.1:1/0"))
    assert error.cause == "refused"
    assert "connection refused" in str(error)


async def test_mutual_tls_needs_the_client_certificate(mtls_redis: RedisServer) -> None:
    with_cert = mtls_redis.settings(
        redis_tls_cert_file=mtls_redis.pki.client_cert,
        redis_tls_key_file=mtls_redis.pki.client_key,
    )
    await _set_and_get(with_cert)
    assert await _process_one_job(with_cert) == {"doubled": 42}

    error = await _expect_failure(mtls_redis.settings())
    # TLS 1.3 finishes the client's handshake before the server checks for a certificate: the
    # server's "certificate required" alert usually arrives first, but on a busy machine the
    # client may see only the closed connection. Both messages name the settings to fix.
    assert error.cause in {"tls_client_cert", "closed"}
    assert "REDIS_TLS_CERT_FILE" in str(error)


async def test_tls_client_to_a_plaintext_port_fails_clearly(secure_redis: RedisServer) -> None:
    url = f"rediss://127.0.0.1:{secure_redis.plain_port}/0"
    error = await _expect_failure(secure_redis.settings(redis_url=url))
    # The server waits for the rest of a "command" while the client waits for a ServerHello.
    assert error.cause in {"tls_handshake", "timeout"}
    assert "rediss:// to a plaintext port" in str(error) or "port is plaintext" in str(error)


def test_unknown_host_is_named(secure_redis: RedisServer) -> None:
    # What redis-py raises when DNS has no such name (this machine's resolver takes ~2 s per
    # lookup to say so, so the error is built here rather than waited for three times).
    settings = secure_redis.settings(redis_url="rediss://no-such-host.invalid:6380/0")
    raised = RedisConnectionError(
        "Error -2 connecting to no-such-host.invalid:6380. Name or service not known."
    )
    error = explain_error(raised, settings)
    assert error.cause == "unreachable"
    assert "no-such-host.invalid" in str(error)


# --- passwords and ACL users -----------------------------------------------------------------


async def test_wrong_password_fails_fast_and_names_the_cause(secure_redis: RedisServer) -> None:
    error = await _expect_failure(secure_redis.settings(redis_password="wrong-Pa55"))
    assert error.cause == "auth"
    assert "authentication failed" in str(error)


async def test_no_password_against_requirepass_is_noauth(secure_redis: RedisServer) -> None:
    error = await _expect_failure(secure_redis.settings(redis_password=None))
    assert error.cause == "noauth"
    assert "NOAUTH" in str(error)


async def test_password_in_the_url_works_and_is_not_logged(
    secure_redis: RedisServer, captured_logs: list[dict[str, Any]]
) -> None:
    url = secure_redis.url(auth=f":{DEFAULT_PASSWORD}@")
    settings = secure_redis.settings(redis_url=url, redis_password=None)
    await _set_and_get(settings)
    logs = captured_logs
    assert DEFAULT_PASSWORD not in repr(logs)
    connected = next(e for e in logs if e["event"] == "redis connected")
    assert connected["auth"] == "password"
    assert ":***@" in connected["target"]


async def test_redis_password_wins_over_the_url(secure_redis: RedisServer) -> None:
    url = secure_redis.url(auth=":wrong-Pa55@")
    await _set_and_get(secure_redis.settings(redis_url=url, redis_password=DEFAULT_PASSWORD))
    error = await _expect_failure(secure_redis.settings(redis_url=url, redis_password=None))
    assert error.cause == "auth"


async def test_acl_user_with_its_own_password(secure_redis: RedisServer) -> None:
    alice = secure_redis.settings(redis_username="alice", redis_password=ALICE_PASSWORD)
    await _set_and_get(alice)
    assert await _process_one_job(alice) == {"doubled": 42}
    client = await connect_redis(alice)
    try:
        assert await client.acl_whoami() == "alice"
    finally:
        await client.aclose()

    wrong = await _expect_failure(
        secure_redis.settings(redis_username="alice", redis_password=DEFAULT_PASSWORD)
    )
    assert wrong.cause == "auth"
    assert "'alice'" in str(wrong)


async def test_acl_user_without_a_right_fails_clearly(secure_redis: RedisServer) -> None:
    reader = secure_redis.settings(redis_username="reader", redis_password=READER_PASSWORD)
    client = await connect_redis(reader)  # PING and reads are allowed
    try:
        assert await client.get(Keys(reader.key_prefix)("anything")) is None
        with pytest.raises(NoPermissionError) as caught:
            await client.set(Keys(reader.key_prefix)("anything"), "x")
        error = explain_error(caught.value, reader)
    finally:
        await client.aclose()
    assert error.cause == "noperm"
    assert "'reader'" in str(error)
    assert "set" in str(error).lower()
