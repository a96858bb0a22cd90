"""Production refuses insecure Redis settings (each with its explicit opt-out); the process ends
with one readable sentence and exit status 1, fast, without printing a secret."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from taskloom.config import InsecureConfiguration, Settings
from tests.cli_support import clean_env, run_taskloom
from tests.factories import ENCRYPTION_KEY, production_settings
from tests.redis.conftest import DEFAULT_PASSWORD, RedisServer

SECRET_IN_URL = "s3cret-Pa55"
KEY = ENCRYPTION_KEY


def test_tls_with_password_and_default_prefix_is_accepted() -> None:
    settings = production_settings()
    assert settings.key_prefix == "production:"
    assert settings.bullmq_prefix == "production:bull"


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"redis_url": "redis://:pw@cache.internal:6379/0"}, "plaintext to a non-loopback host"),
        ({"redis_url": "redis://:pw@10.0.0.5:6379/0"}, "plaintext to a non-loopback host"),
        ({"redis_url": "rediss://cache.internal:6380/0"}, "no password"),
        ({"redis_key_prefix": ""}, "REDIS_KEY_PREFIX is empty"),
        ({"redis_tls_verify": False}, "REDIS_TLS_VERIFY=false"),
        ({"redis_tls_verify": False, "redis_allow_insecure": True}, "REDIS_TLS_VERIFY=false"),
    ],
)
def test_insecure_redis_is_refused(overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(InsecureConfiguration, match=complaint) as caught:
        production_settings(**overrides)
    assert SECRET_IN_URL not in str(caught.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"redis_url": "redis://cache.internal:6379/0", "redis_key_prefix": ""},
        {"redis_url": "redis://10.0.0.5:6379/0"},
    ],
)
def test_allow_insecure_is_the_explicit_opt_out(overrides: dict[str, Any]) -> None:
    with pytest.raises(InsecureConfiguration):
        production_settings(**overrides)
    assert production_settings(**overrides, redis_allow_insecure=True).redis_allow_insecure


def test_unverified_tls_has_its_own_opt_out() -> None:
    settings = production_settings(redis_tls_verify=False, redis_allow_unverified_tls=True)
    assert not settings.redis_tls_verify


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pw@127.0.0.1:6379/0",
        "redis://:pw@localhost:6379/0",
        "redis://:pw@[::1]:6379/0",
        "unix:///run/redis/redis.sock",
    ],
)
def test_plaintext_to_this_machine_is_accepted_with_a_password(url: str) -> None:
    if url.startswith("unix"):
        assert production_settings(redis_url=url, redis_password="pw").redis_is_local
    else:
        assert production_settings(redis_url=url).redis_is_local


def test_redis_password_counts_as_a_password() -> None:
    assert production_settings(redis_url="rediss://cache.internal:6380/0", redis_password="pw")


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"redis_url": "rediss://c:6380/0?ssl_cert_reqs=none"}, "ssl_cert_reqs"),
        ({"redis_url": "http://c:6380/0"}, "redis://, rediss:// or unix://"),
        ({"redis_key_prefix": "prod*:"}, "must not contain"),
        ({"redis_key_prefix": "{a}{b}:"}, "hash tag"),
        ({"redis_tls_cert_file": "/etc/client.crt"}, "together"),
    ],
)
def test_invalid_redis_settings_are_rejected_everywhere(
    overrides: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Settings(_env_file=None, **overrides)


def test_hash_tag_prefix_for_cluster() -> None:
    settings = production_settings(redis_key_prefix="{production}:")
    assert settings.key_prefix == "{production}:"
    assert settings.bullmq_prefix == "{production}:bull"


def _production_env(**extra: str) -> dict[str, str]:
    values = {
        "TASKLOOM_ENV": "production",
        "JWT_SECRET": "x" * 48,
        "CREDENTIAL_ENCRYPTION_KEYS": KEY,
        "DATABASE_URL": "postgresql://owner@127.0.0.1:1/taskloom",
        "DATABASE_APP_PASSWORD": "app-secret",
    }
    return clean_env(**(values | extra))


async def test_the_process_refuses_to_start_with_one_sentence(tmp_path: Path) -> None:
    env = _production_env(REDIS_URL="redis://:hunter2-Pa55@cache.internal:6379/0")
    result = await run_taskloom("api", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "refusing to start in production" in result.stderr
    assert "plaintext to a non-loopback host" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2-Pa55" not in result.stderr + result.stdout


async def test_a_bad_password_stops_the_process_in_seconds(
    secure_redis: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    env = _production_env(
        DATABASE_URL=settings.database_url or "",
        DATABASE_APP_URL=settings.app_database_url(),
        # The session's own role (the default name does not exist in the shared cluster).
        DATABASE_APP_ROLE=settings.database_app_role,
        REDIS_URL=secure_redis.url(auth=":wrong-Pa55@"),
        REDIS_TLS_CA_FILE=str(secure_redis.pki.ca),
    )
    started = time.monotonic()
    result = await run_taskloom("api", env=env, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "authentication failed" in result.stderr
    assert "wrong-Pa55" not in result.stderr + result.stdout
    assert DEFAULT_PASSWORD not in result.stderr
    assert elapsed < 15  # interpreter start + imports + role check; Redis itself < 1 s
