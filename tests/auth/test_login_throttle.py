"""Sign-in attempts are counted in Redis per account and per IP, registrations per IP; over
the limit ⇒ 429. Only keyed hashes of e-mails and IP addresses reach Redis."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from taskloom.app import create_app
from taskloom.runtime import Runtime
from tests.factories import PASSWORD, register, unique_email


@asynccontextmanager
async def _app_with(
    runtime: Runtime, ip: str, **limits: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app on the session's deployment with `limits` applied, and a client calling from `ip`."""
    settings = runtime.settings.model_copy(update=limits)
    app: FastAPI = create_app(runtime=dataclasses.replace(runtime, settings=settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield app, c


async def _forget_counters(runtime: Runtime) -> None:
    for key in [k async for k in runtime.redis.scan_iter(match=runtime.keys("ratelimit", "*"))]:
        await runtime.redis.delete(key)


@pytest.fixture
async def strict_client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose limits are small: 3 failures per account, 5 per IP."""
    limits = {"login_max_failures_per_account": 3, "login_max_failures_per_ip": 5}
    async with _app_with(runtime, "198.51.100.23", **limits) as (_, client):
        yield client


async def test_account_is_throttled_after_repeated_failures(
    strict_client: httpx.AsyncClient, runtime: Runtime
) -> None:
    account = await register(strict_client, label="throttle")
    for _ in range(3):
        bad = await strict_client.post(
            "/auth/login", json={"email": account.email, "password": "wrong password"}
        )
        assert bad.status_code == 401
    blocked = await strict_client.post(
        "/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    assert blocked.status_code == 429
    assert blocked.json()["error"]["code"] == "rate_limited"
    assert 0 < int(blocked.headers["retry-after"]) <= runtime.settings.login_failure_window_seconds
    # The counters live under this deployment's key prefix.
    keys = [k async for k in runtime.redis.scan_iter(match=runtime.keys("ratelimit", "*"))]
    assert keys
    assert all(k.startswith(runtime.settings.key_prefix) for k in keys)
    assert not any(account.email in k for k in keys)  # only a hash of the email reaches Redis


async def test_ip_is_throttled_across_accounts(
    strict_client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await _forget_counters(runtime)
    for i in range(5):
        bad = await strict_client.post(
            "/auth/login", json={"email": f"ghost{i}@example.test", "password": "whatever"}
        )
        assert bad.status_code == 401
    blocked = await strict_client.post(
        "/auth/login", json={"email": "ghost-new@example.test", "password": "whatever"}
    )
    assert blocked.status_code == 429


async def test_a_parallel_burst_of_wrong_passwords_gets_exactly_the_limit_through(
    strict_client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """Each attempt is counted before its password is hashed: 12 at once against a limit of 3
    per account get three 401s and nine 429s, not twelve guesses."""
    account = await register(strict_client, label="burst")
    await _forget_counters(runtime)
    answers = await asyncio.gather(
        *(
            strict_client.post(
                "/auth/login", json={"email": account.email, "password": f"wrong password {i}"}
            )
            for i in range(12)
        )
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [401] * 3 + [429] * 9, statuses
    # The right password is refused too until the window ends.
    late = await strict_client.post(
        "/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    assert late.status_code == 429


async def test_successful_sign_ins_do_not_use_up_the_addresss_attempts(
    strict_client: httpx.AsyncClient, runtime: Runtime
) -> None:
    account = await register(strict_client, label="regular")
    await _forget_counters(runtime)
    for _ in range(8):  # more than the 5 failures the IP is allowed
        ok = await strict_client.post(
            "/auth/login", json={"email": account.email, "password": PASSWORD}
        )
        assert ok.status_code == 200, ok.text
    bad = await strict_client.post(
        "/auth/login", json={"email": account.email, "password": "wrong password"}
    )
    assert bad.status_code == 401


async def test_redis_holds_no_raw_ip_address_or_email_of_a_failed_sign_in(
    runtime: Runtime,
) -> None:
    ip = "192.0.2.147"
    async with _app_with(runtime, ip) as (_, client):
        account = await register(client, label="hashed")
        for _ in range(2):
            bad = await client.post(
                "/auth/login", json={"email": account.email, "password": "wrong password"}
            )
            assert bad.status_code == 401
    names = [k async for k in runtime.redis.scan_iter(match=runtime.keys.pattern)]
    assert any(":ratelimit:login:ip:" in f":{k}" for k in names)
    assert not [k for k in names if ip in k or account.email in k or ip.replace(".", ":") in k]


async def test_registration_beyond_the_per_ip_limit_answers_429(runtime: Runtime) -> None:
    """A taken e-mail answers 409, so registration is an existence check: it is throttled per
    IP like sign-in, and past the limit a taken e-mail gets the same 429 as a new one."""
    await _forget_counters(runtime)
    async with _app_with(runtime, "198.51.100.77", register_max_per_ip=2) as (app, client):
        first = await register(client, label="reg")
        taken = await client.post(
            "/auth/register",
            json={"email": first.email, "password": PASSWORD, "display_name": "Again"},
        )
        assert taken.status_code == 409
        for email in (first.email, unique_email("reg")):
            refused = await client.post(
                "/auth/register",
                json={"email": email, "password": PASSWORD, "display_name": "More"},
            )
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "rate_limited"
            retry_after = int(refused.headers["retry-after"])
            assert 0 < retry_after <= runtime.settings.register_window_seconds
        transport = httpx.ASGITransport(app=app, client=("198.51.100.78", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
            await register(other, label="reg")  # another address has its own allowance
