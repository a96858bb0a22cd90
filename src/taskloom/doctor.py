"""`taskloom doctor`: a security checklist of the live configuration.

Each check reports pass / warn / fail / skip. A check that production requires fails in
production (or with `--strict`) and only warns elsewhere; checks that break tenant isolation or
connectivity fail everywhere. The command exits 1 when anything fails.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from taskloom.config import DEV_JWT_SECRET, MIN_JWT_SECRET_LENGTH, Registration, Settings
from taskloom.db.engine import Database, app_role_problems, create_database
from taskloom.db.rls import isolated_tables
from taskloom.models import metadata
from taskloom.redis import RedisConnectError, connect_redis, describe_target


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 (a status, not a password)
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    area: str
    name: str
    status: Status
    detail: str


class _Checklist:
    def __init__(self, settings: Settings, *, strict: bool) -> None:
        self.settings = settings
        self.production_rules = strict or settings.is_production
        self.checks: list[Check] = []

    def ok(self, area: str, name: str, detail: str) -> None:
        self.checks.append(Check(area, name, Status.PASS, detail))

    def skip(self, area: str, name: str, detail: str) -> None:
        self.checks.append(Check(area, name, Status.SKIP, detail))

    def warn(self, area: str, name: str, detail: str) -> None:
        self.checks.append(Check(area, name, Status.WARN, detail))

    def fail(self, area: str, name: str, detail: str) -> None:
        self.checks.append(Check(area, name, Status.FAIL, detail))

    def required(self, area: str, name: str, detail: str) -> None:
        """A production requirement is not met: fail under production rules, warn otherwise."""
        if self.production_rules:
            self.fail(area, name, detail)
        else:
            self.warn(area, name, detail + " (required in production)")

    def opted_out(self, area: str, name: str, detail: str, flag: str) -> None:
        self.warn(area, name, f"{detail} (allowed by {flag}=true)")


async def run_checks(settings: Settings, *, strict: bool = False) -> list[Check]:
    """Every check, in display order. Connects to Redis and PostgreSQL when they are set."""
    checklist = _Checklist(settings, strict=strict)
    await _redis_checks(checklist)
    _secret_checks(checklist)
    _abuse_checks(checklist)
    await _database_checks(checklist)
    return checklist.checks


# --- Redis -------------------------------------------------------------------------------------


async def _redis_checks(c: _Checklist) -> None:
    s, area = c.settings, "redis"
    if not s.redis_configured:
        c.required(area, "server", "REDIS_URL is unset: the embedded redis-server is in use")
        return
    c.ok(area, "server", describe_target(s))

    tls_fix = "set REDIS_SENTINEL_TLS=true" if s.redis_sentinels else "use rediss://"
    if s.redis_uses_tls:
        c.ok(area, "tls", f"{_tls_kind(s)} (TLS 1.2 or newer)")
    elif s.redis_is_local:
        c.ok(area, "tls", "plaintext, but to a unix socket or loopback address")
    elif s.redis_allow_insecure:
        c.opted_out(area, "tls", "plaintext to a remote host", "REDIS_ALLOW_INSECURE")
    else:
        c.required(area, "tls", f"plaintext to a remote host: {tls_fix}")
    if s.redis_sentinels:
        _sentinel_auth_check(c)

    if s.redis_uses_tls:
        ca = f"CA file {s.redis_tls_ca_file}" if s.redis_tls_ca_file else "the system's CAs"
        if s.redis_tls_verify:
            c.ok(
                area, "certificate verification", f"certificate and host name checked against {ca}"
            )
        elif s.redis_allow_unverified_tls:
            c.opted_out(
                area,
                "certificate verification",
                "off (REDIS_TLS_VERIFY=false)",
                "REDIS_ALLOW_UNVERIFIED_TLS",
            )
        else:
            c.required(
                area,
                "certificate verification",
                "off (REDIS_TLS_VERIFY=false): set REDIS_TLS_CA_FILE instead",
            )
        if s.redis_tls_cert_file is not None:
            c.ok(area, "client certificate", f"mutual TLS with {s.redis_tls_cert_file}")
        else:
            c.skip(area, "client certificate", "none (optional: REDIS_TLS_CERT_FILE / _KEY_FILE)")

    user = s.redis_username or "default"
    if s.redis_has_password:
        c.ok(area, "authentication", f"password for ACL user {user!r}")
    elif s.redis_allow_insecure:
        c.opted_out(area, "authentication", "no password", "REDIS_ALLOW_INSECURE")
    else:
        c.required(area, "authentication", "no password: set REDIS_PASSWORD")

    if s.key_prefix:
        c.ok(area, "key prefix", f"{s.key_prefix!r} (BullMQ: {s.bullmq_prefix!r})")
    elif s.redis_allow_insecure:
        c.opted_out(area, "key prefix", "empty", "REDIS_ALLOW_INSECURE")
    else:
        c.required(area, "key prefix", "empty: set REDIS_KEY_PREFIX")

    try:
        client = await connect_redis(s, purpose="doctor")
    except RedisConnectError as exc:
        c.fail(area, "connection", str(exc))
        return
    try:
        info = await client.info("server")
        memory = await client.info("memory")
    finally:
        await client.aclose()
    c.ok(area, "connection", f"PING answered by Redis {info.get('redis_version', '?')}")
    if s.redis_sentinels:
        c.ok(area, "failover", f"commands reconnect for up to {s.redis_failover_seconds:g} s")
    if s.redis_cluster:
        c.ok(area, "cluster", f"keys used together share hash tags (BullMQ: {s.bullmq_prefix!r})")
    policy = memory.get("maxmemory_policy")
    if policy == "noeviction":
        c.ok(area, "eviction policy", "noeviction (queued jobs are never evicted)")
    else:
        c.warn(
            area,
            "eviction policy",
            f"{policy}: Redis may evict queue keys under memory pressure; BullMQ needs noeviction",
        )


def _tls_kind(s: Settings) -> str:
    return "REDIS_SENTINEL_TLS=true, Sentinels and data nodes" if s.redis_sentinels else "rediss://"


def _sentinel_auth_check(c: _Checklist) -> None:
    """Not required: a Sentinel holds no data, but one open to anyone on the network can be
    told to fail over, or to monitor another master (SENTINEL SET / MONITOR)."""
    s, area = c.settings, "redis"
    if s.redis_sentinel_password is not None:
        user = s.redis_sentinel_username or "default"
        c.ok(area, "sentinel authentication", f"password for Sentinel user {user!r}")
    else:
        c.warn(
            area,
            "sentinel authentication",
            "none: anyone who reaches a Sentinel can trigger a failover (set `requirepass` on "
            "the Sentinels and REDIS_SENTINEL_PASSWORD)",
        )


# --- secrets -----------------------------------------------------------------------------------


def _secret_checks(c: _Checklist) -> None:
    s, area = c.settings, "secrets"
    secret = s.jwt_secret.get_secret_value()
    if secret == DEV_JWT_SECRET:
        c.required(area, "JWT secret", "the built-in development secret")
    elif len(secret) < MIN_JWT_SECRET_LENGTH:
        c.required(
            area, "JWT secret", f"{len(secret)} characters, fewer than {MIN_JWT_SECRET_LENGTH}"
        )
    else:
        c.ok(area, "JWT secret", f"{len(secret)} characters")
    if s.credential_encryption_keys is None:
        c.required(
            area,
            "credential encryption keys",
            "CREDENTIAL_ENCRYPTION_KEYS is unset (a key derived from JWT_SECRET is used)",
        )
    else:
        keys = s.credential_keys()
        c.ok(
            area,
            "credential encryption keys",
            f"current key {keys[0][0]!r}, {len(keys)} key(s), AES-256-GCM",
        )
    if s.metrics_token is None:
        # Not a refusal: many deployments keep /metrics on a private network instead.
        c.warn(area, "metrics token", "unset: GET /metrics answers anyone who can reach it")
    else:
        c.ok(area, "metrics token", "GET /metrics needs a bearer token")


# --- what one client may do --------------------------------------------------------------------


def _abuse_checks(c: _Checklist) -> None:
    """Not refusals (a private instance may want either), but what a reviewer asks first."""
    s, area = c.settings, "limits"
    if s.rate_limits_enabled:
        c.ok(
            area,
            "rate limits",
            f"per key or session every {s.rate_limit_window_seconds} s: {s.rate_limit_reads} "
            f"reads, {s.rate_limit_writes} writes, {s.rate_limit_execute} executions",
        )
    else:
        c.warn(
            area, "rate limits", "RATE_LIMITS_ENABLED=false: any key or session may flood the API"
        )
    mode = s.registration_mode
    if mode is Registration.OPEN and s.is_production:
        c.warn(area, "registration", "REGISTRATION=open: anyone may create an account")
    else:
        c.ok(area, "registration", f"REGISTRATION={mode.value}")
    if s.public_url:
        c.ok("links", "public URL", f"links in webhook events start with {s.public_url}")
    elif s.is_production:
        c.warn(
            "links",
            "public URL",
            "PUBLIC_URL is unset: approval.requested events carry a path (/ui/approvals/…), "
            "not a link people can open",
        )


# --- PostgreSQL --------------------------------------------------------------------------------


async def _database_checks(c: _Checklist) -> None:
    s, area = c.settings, "database"
    if not s.database_url:
        c.required(area, "server", "DATABASE_URL is unset: the embedded PostgreSQL is in use")
        return
    if s.database_app_url is None and s.database_app_password is None:
        c.required(area, "application role password", "set DATABASE_APP_URL or _PASSWORD")
    database = create_database(s)
    try:
        await _role_checks(c, database)
        await _pgbouncer_checks(c, database)
        await _rls_checks(c, database)
        await _sso_checks(c, database)
    except (SQLAlchemyError, OSError) as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        if "unsupported startup parameter" in detail:  # PgBouncer's answer to statement_timeout
            detail += " (PgBouncer in front of the application role: set DATABASE_PGBOUNCER=true)"
        c.fail(area, "connection", detail)
    finally:
        await database.dispose()


async def _role_checks(c: _Checklist, database: Database) -> None:
    name, problems = await app_role_problems(database)
    if problems:
        c.fail("database", "application role", f"{name!r} " + ", ".join(problems))
    else:
        c.ok("database", "application role", f"{name!r}: not superuser, no BYPASSRLS, owns nothing")


async def _pgbouncer_checks(c: _Checklist, database: Database) -> None:
    """Under DATABASE_PGBOUNCER the statement timeout is the application role's own (set by
    `taskloom migrate`), not the process's: say when the two differ."""
    if not c.settings.database_pgbouncer:
        return
    async with database.app_engine.connect() as conn:
        shown = await conn.scalar(
            text("select setting from pg_settings where name = 'statement_timeout'")
        )
    wanted = c.settings.database_statement_timeout_ms
    if str(shown) == str(wanted):
        c.ok("database", "pgbouncer", f"no prepared statements kept; statement_timeout {wanted} ms")
    else:
        c.warn(
            "database",
            "pgbouncer",
            f"the application role's statement_timeout is {shown} ms, "
            f"DATABASE_STATEMENT_TIMEOUT_MS is {wanted}: run `taskloom migrate`",
        )


async def _rls_checks(c: _Checklist, database: Database) -> None:
    area = "database"
    async with database.system_engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "select c.relname, c.relrowsecurity, c.relforcerowsecurity from pg_class c "
                    "join pg_namespace n on n.oid = c.relnamespace "
                    "where n.nspname = 'public' and c.relkind = 'r'"
                )
            )
        ).all()
    tables = {row.relname: row for row in rows}
    isolated = isolated_tables(metadata)
    missing = sorted(set(isolated) - set(tables))
    unforced = sorted(
        name
        for name in isolated
        if name in tables and not (tables[name].relrowsecurity and tables[name].relforcerowsecurity)
    )
    if missing:
        c.fail(area, "row-level security", f"tables missing (run `taskloom migrate`): {missing}")
    elif unforced:
        c.fail(area, "row-level security", f"not enabled and forced on: {unforced}")
    else:
        c.ok(area, "row-level security", f"enabled and forced on all {len(isolated)} tables")


async def _sso_checks(c: _Checklist, database: Database) -> None:
    """Single sign-on's providers: their redirect URI and how their issuer is reached."""
    area = "sso"
    async with database.system_engine.connect() as conn:
        providers = (
            await conn.execute(text("select slug, issuer from sso_providers order by slug"))
        ).all()
    if not providers:
        c.skip(area, "providers", "none configured")
        return
    c.ok(area, "providers", f"{len(providers)}: " + ", ".join(p.slug for p in providers))
    s = c.settings
    if s.public_url:
        c.ok(area, "redirect URI", f"{s.public_url}/auth/oidc/<slug>/callback")
    elif s.is_production:
        # Built from each request's Host and scheme instead, which a proxy may not pass on:
        # the provider then refuses a redirect URI it does not know.
        c.warn(
            area,
            "redirect URI",
            "PUBLIC_URL is unset: each provider's redirect URI is built from the request's "
            "host and scheme, which must match what is registered at the provider",
        )
    plaintext = [p for p in providers if urlsplit(p.issuer).scheme == "http"]
    remote = [p.slug for p in plaintext if not _is_loopback(urlsplit(p.issuer).hostname)]
    if remote:
        # Discovery and the signing keys over plaintext: whoever is on the path can swap the
        # keys and sign ID tokens for anyone.
        c.required(area, "issuer TLS", f"http:// issuer (use https://): {remote}")
    elif plaintext and c.production_rules:
        c.warn(
            area,
            "issuer TLS",
            f"http:// issuer on this machine (loopback): {[p.slug for p in plaintext]}",
        )
    else:
        c.ok(area, "issuer TLS", "every issuer is https://" if not plaintext else "loopback only")


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- output ------------------------------------------------------------------------------------


def failed(checks: Iterable[Check]) -> bool:
    return any(check.status is Status.FAIL for check in checks)


def render_text(checks: list[Check], settings: Settings, *, strict: bool) -> str:
    rules = "production" if strict or settings.is_production else "development"
    lines = [f"Taskloom doctor (TASKLOOM_ENV={settings.taskloom_env.value}, {rules} rules)"]
    for check in checks:
        label = f"{check.area}: {check.name}"
        lines.append(f"  {check.status.value.upper():<4}  {label:<38} {check.detail}")
    counts = {status: sum(ch.status is status for ch in checks) for status in Status}
    lines.append("  " + ", ".join(f"{n} {status.value}" for status, n in counts.items() if n))
    return "\n".join(lines)


def render_json(checks: list[Check]) -> str:
    return json.dumps(
        {"ok": not failed(checks), "checks": [asdict(check) for check in checks]}, indent=2
    )
