"""`taskloom doctor`: the checklist of the live configuration and its exit status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from taskloom.config import Settings, production_guard_disabled
from taskloom.db.engine import create_database
from taskloom.doctor import Check, Status, failed, run_checks
from tests.cli_support import clean_env, run_taskloom
from tests.redis.conftest import DEFAULT_PASSWORD, RedisServer
from tests.redis.test_production_guard import KEY


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {f"{c.area}: {c.name}": c for c in checks}


@pytest.fixture
def production_values(settings: Settings, secure_redis: RedisServer) -> dict[str, Any]:
    """A configuration production accepts: the test database, the TLS redis-server."""
    return {
        "taskloom_env": "production",
        "jwt_secret": "x" * 48,
        "credential_encryption_keys": KEY,
        "database_url": settings.database_url,
        "database_app_url": settings.app_database_url(),
        "redis_url": secure_redis.url(),
        "redis_tls_ca_file": secure_redis.pki.ca,
        "redis_password": DEFAULT_PASSWORD,
    }


def _unguarded(**values: Any) -> Settings:
    with production_guard_disabled():
        return Settings(_env_file=None, **values)


async def test_a_secure_production_configuration_passes(production_values: dict[str, Any]) -> None:
    checks = _by_name(await run_checks(_unguarded(**production_values)))
    assert not failed(checks.values())
    for name in (
        "redis: tls",
        "redis: certificate verification",
        "redis: authentication",
        "redis: key prefix",
        "redis: connection",
        "secrets: JWT secret",
        "secrets: credential encryption keys",
        "database: application role",
        "database: row-level security",
    ):
        assert checks[name].status is Status.PASS, (name, checks[name])
    assert "'production:'" in checks["redis: key prefix"].detail
    assert checks["secrets: metrics token"].status is Status.WARN  # advised, not required
    assert "'production:bull'" in checks["redis: key prefix"].detail
    assert checks["limits: rate limits"].status is Status.PASS
    assert checks["limits: registration"].status is Status.PASS
    assert checks["limits: registration"].detail == "REGISTRATION=invite"  # production's default
    assert checks["links: public URL"].status is Status.WARN  # advised: approval links are paths
    with_url = _by_name(
        await run_checks(_unguarded(**production_values, public_url="https://tl.example.com"))
    )
    assert with_url["links: public URL"].status is Status.PASS
    assert "https://tl.example.com" in with_url["links: public URL"].detail


async def test_no_rate_limits_or_open_registration_in_production_warn(
    production_values: dict[str, Any],
) -> None:
    settings = _unguarded(**production_values, rate_limits_enabled=False, registration="open")
    checks = _by_name(await run_checks(settings))
    assert checks["limits: rate limits"].status is Status.WARN
    assert "RATE_LIMITS_ENABLED=false" in checks["limits: rate limits"].detail
    assert checks["limits: registration"].status is Status.WARN
    assert not failed(checks.values())  # advice: a private instance may want either


@pytest.mark.parametrize(
    ("overrides", "failing"),
    [
        ({"redis_tls_verify": False}, "redis: certificate verification"),
        ({"redis_password": None}, "redis: authentication"),
        ({"redis_key_prefix": ""}, "redis: key prefix"),
        ({"jwt_secret": "short"}, "secrets: JWT secret"),
        ({"credential_encryption_keys": None}, "secrets: credential encryption keys"),
    ],
)
async def test_each_production_requirement_fails_in_production(
    production_values: dict[str, Any], overrides: dict[str, Any], failing: str
) -> None:
    checks = _by_name(await run_checks(_unguarded(**(production_values | overrides))))
    assert checks[failing].status is Status.FAIL, checks[failing]
    assert failed(checks.values())


async def test_opt_outs_warn_instead_of_failing(production_values: dict[str, Any]) -> None:
    settings = _unguarded(
        **production_values, redis_tls_verify=False, redis_allow_unverified_tls=True
    )
    checks = _by_name(await run_checks(settings))
    assert checks["redis: certificate verification"].status is Status.WARN
    assert "REDIS_ALLOW_UNVERIFIED_TLS" in checks["redis: certificate verification"].detail
    assert not failed(checks.values())


async def test_development_only_warns_about_production_requirements(settings: Settings) -> None:
    checks = _by_name(await run_checks(settings))
    assert checks["secrets: JWT secret"].status is Status.WARN
    assert "required in production" in checks["secrets: JWT secret"].detail
    assert checks["database: row-level security"].status is Status.PASS
    assert not failed(checks.values())
    strict = _by_name(await run_checks(settings, strict=True))
    assert strict["secrets: JWT secret"].status is Status.FAIL


async def test_a_superuser_application_role_always_fails(settings: Settings) -> None:
    unsafe = settings.model_copy(update={"database_app_url": settings.database_url})
    checks = _by_name(await run_checks(unsafe))
    assert checks["database: application role"].status is Status.FAIL
    assert "superuser" in checks["database: application role"].detail


async def test_rls_not_forced_on_a_tenant_table_fails(settings: Settings) -> None:
    database = create_database(settings)
    try:
        async with database.system_engine.begin() as conn:
            await conn.execute(text("alter table workflows no force row level security"))
        checks = _by_name(await run_checks(settings))
    finally:
        async with database.system_engine.begin() as conn:
            await conn.execute(text("alter table workflows force row level security"))
        await database.dispose()
    assert checks["database: row-level security"].status is Status.FAIL
    assert "workflows" in checks["database: row-level security"].detail


async def test_an_unreachable_redis_fails_with_its_cause(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    checks = _by_name(await run_checks(down))
    assert checks["redis: connection"].status is Status.FAIL
    assert "connection refused" in checks["redis: connection"].detail


def _env(values: dict[str, Any]) -> dict[str, str]:
    return clean_env(**{k.upper(): str(v) for k, v in values.items() if v is not None})


async def test_cli_exit_status(production_values: dict[str, Any], tmp_path: Path) -> None:
    values = production_values
    good = await run_taskloom("doctor", env=_env(values), cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "PASS  redis: certificate verification" in good.stdout
    assert values["redis_password"] not in good.stdout + good.stderr

    # Production would refuse this configuration; doctor still reports all of it, then exits 1.
    bad = await run_taskloom(
        "doctor",
        "--json",
        env=_env(values | {"redis_tls_verify": False, "jwt_secret": "weak"}),
        cwd=tmp_path,
    )
    assert bad.returncode == 1, bad.stderr
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    failing = {f"{c['area']}: {c['name']}" for c in report["checks"] if c["status"] == "fail"}
    assert failing == {"redis: certificate verification", "secrets: JWT secret"}


async def test_sso_providers_need_https_issuers_and_a_public_url_in_production(
    production_values: dict[str, Any],
) -> None:
    database = create_database(_unguarded(**production_values))
    slugs = {"doctor-https": "https://idp.example.test", "doctor-plain": "http://idp.example.test"}

    async def seed(slug: str) -> None:
        async with database.system_engine.begin() as conn:
            await conn.execute(
                text(
                    "insert into sso_providers (id, slug, display_name, issuer, client_id, "
                    "secret_key_id, secret_encrypted, scopes, algorithms) values "
                    "(gen_random_uuid(), :slug, 'Doctor', :issuer, 'c', 'k', 'x', "
                    "'[\"openid\"]', '[\"RS256\"]')"
                ),
                {"slug": slug, "issuer": slugs[slug]},
            )

    try:
        await seed("doctor-https")
        checks = _by_name(await run_checks(_unguarded(**production_values)))
        assert checks["sso: providers"].status is Status.PASS
        assert "doctor-https" in checks["sso: providers"].detail
        assert checks["sso: issuer TLS"].status is Status.PASS
        assert checks["sso: redirect URI"].status is Status.WARN
        assert "PUBLIC_URL is unset" in checks["sso: redirect URI"].detail
        with_url = _by_name(
            await run_checks(_unguarded(**production_values, public_url="https://tl.example.com"))
        )
        assert with_url["sso: redirect URI"].status is Status.PASS
        assert (
            "https://tl.example.com/auth/oidc/<slug>/callback"
            in with_url["sso: redirect URI"].detail
        )

        await seed("doctor-plain")
        checks = _by_name(await run_checks(_unguarded(**production_values)))
        assert checks["sso: issuer TLS"].status is Status.FAIL
        assert "doctor-plain" in checks["sso: issuer TLS"].detail
        assert "doctor-https" not in checks["sso: issuer TLS"].detail
        assert failed(checks.values())
        development = production_values | {"taskloom_env": "development"}
        relaxed = _by_name(await run_checks(_unguarded(**development)))
        assert relaxed["sso: issuer TLS"].status is Status.WARN
        assert "required in production" in relaxed["sso: issuer TLS"].detail
    finally:
        async with database.system_engine.begin() as conn:
            await conn.execute(
                text("delete from sso_providers where slug = any(:s)"), {"s": list(slugs)}
            )
        await database.dispose()
