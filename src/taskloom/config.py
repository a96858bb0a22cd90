"""The one configuration object. Nothing else in Taskloom reads os.environ.

Every field is documented in `.env.example` with its default; a test keeps the two in step.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Self
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "taskloom-development-secret-do-not-use-in-production"  # noqa: S105
MIN_JWT_SECRET_LENGTH = 32
REDIS_SCHEMES = ("redis", "rediss", "unix")

# On by default; `taskloom doctor` turns it off to report every problem instead of one refusal.
_production_guard: ContextVar[bool] = ContextVar("production_guard", default=True)


@contextmanager
def production_guard_disabled() -> Iterator[None]:
    """Build Settings without the production refusal (for `taskloom doctor` only)."""
    token = _production_guard.set(False)
    try:
        yield
    finally:
        _production_guard.reset(token)


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class Registration(StrEnum):
    """Who may create an account themselves (docs/SECURITY.md)."""

    OPEN = "open"  # anyone
    INVITE = "invite"  # only an email with a pending, unexpired invitation
    CLOSED = "closed"  # nobody: operators use `taskloom user create`


class BreakerSharing(StrEnum):
    """Where circuit breakers keep their state (breakers.py, shared_breakers.py)."""

    PROCESS = "process"
    REDIS = "redis"


class InsecureConfiguration(RuntimeError):
    """Production was asked to start with an unsafe configuration. Not a ValueError, so pydantic
    lets it through unwrapped and the operator reads one clear sentence."""


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value (a REDIS_URL or DATABASE_URL with its password) is
    # never echoed into the error printed at start-up.
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    # --- environment -------------------------------------------------------------------------
    taskloom_env: Environment = Environment.DEVELOPMENT
    data_dir: Path = Path(".taskloom")

    # --- PostgreSQL ----------------------------------------------------------------------------
    # The privileged URL: migrations and explicitly named cross-tenant system work.
    database_url: str | None = None
    # The application's URL: a role without BYPASSRLS that does not own the tables. When unset
    # it is derived from DATABASE_URL with DATABASE_APP_ROLE / DATABASE_APP_PASSWORD.
    database_app_url: str | None = None
    database_app_role: str = Field(default="taskloom_app", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    database_app_password: SecretStr | None = None
    # Connections the application engine keeps per process, opened as needed and then kept (no
    # overflow: one opened past the pool and closed on return costs a PostgreSQL backend per
    # burst; a request beyond the pool waits for a connection). docs/ARCHITECTURE.md.
    database_pool_size: int = Field(default=20, ge=1, le=200)
    # Sent as a startup parameter on each connection; also the application role's own default,
    # set by `taskloom migrate` (ALTER ROLE ... SET), which is what applies through PgBouncer.
    database_statement_timeout_ms: int = Field(default=30_000, ge=0)
    # Prepared statements kept per connection (by asyncpg for the hot path's statements, by
    # SQLAlchemy for the rest). 0: none kept, for a pooler that cannot keep a named statement on
    # one server connection (PgBouncer in transaction mode before 1.21). docs/PERFORMANCE.md has
    # the cost of each.
    database_statement_cache_size: int = Field(default=100, ge=0, le=10_000)
    # DATABASE_APP_URL points at PgBouncer in `pool_mode = transaction`: the application engine
    # keeps no prepared statement (as with a cache size of 0) and sends no startup parameter
    # PgBouncer refuses (statement_timeout is then the role's own). docs/SCALING.md.
    database_pgbouncer: bool = False
    # Ping a pooled connection before use only after it sat idle this long (docs/ARCHITECTURE.md).
    database_ping_after_idle_seconds: float = Field(default=10.0, ge=0, le=3_600)

    # --- Redis ---------------------------------------------------------------------------------
    # Every Redis client is built from these by taskloom.redis (see docs/REDIS.md).
    redis_url: str | None = None
    redis_password: SecretStr | None = None  # wins over a password in REDIS_URL
    redis_username: str | None = None  # Redis 6+ ACL user; wins over a user in REDIS_URL
    redis_tls_ca_file: Path | None = None  # CA bundle that signed the server certificate
    redis_tls_cert_file: Path | None = None  # client certificate (mutual TLS)
    redis_tls_key_file: Path | None = None  # its private key
    redis_tls_verify: bool = True  # false: no certificate / host name check (warns)
    redis_allow_unverified_tls: bool = False  # lets production run with REDIS_TLS_VERIFY=false
    redis_allow_insecure: bool = False  # lets production run plaintext / passwordless / unprefixed
    redis_key_prefix: str | None = Field(default=None, max_length=64)  # default "{environment}:"
    redis_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Redis Sentinel, instead of REDIS_URL (docs/REDIS.md "Sentinel"): the Sentinels to ask, the
    # name they monitor the master under, and their own credentials when they require one. The
    # data nodes' credentials and TLS files are the ones above.
    redis_sentinels: str | None = None  # host:port,host:port,... (port 26379 when left out)
    redis_sentinel_master: str | None = None
    redis_sentinel_username: str | None = None
    redis_sentinel_password: SecretStr | None = None
    redis_sentinel_tls: bool = False  # TLS (REDIS_TLS_* files) to the Sentinels and data nodes
    # How long a command keeps reconnecting (through the Sentinels, to whichever node they name
    # master) before it fails: cover the Sentinels' down-after-milliseconds and the election.
    redis_failover_seconds: float = Field(default=15.0, gt=0, le=300)
    # Redis Cluster (docs/REDIS.md "Redis Cluster"): REDIS_URL names one node (its scheme, TLS
    # and credentials serve every node); REDIS_CLUSTER_NODES more, asked when it does not answer.
    redis_cluster: bool = False
    redis_cluster_nodes: str | None = None  # host:port,host:port,... (port 6379 when left out)

    # --- queue and workers (docs/QUEUE.md) --------------------------------------------------
    worker_concurrency: int = Field(default=10, ge=1, le=500)
    # Orchestration jobs hold their lock this long between renewals (renewed every half).
    queue_lock_duration_ms: int = Field(default=300_000, ge=1_000)
    queue_stalled_interval_ms: int = Field(default=30_000, ge=500)
    queue_max_stalled_count: int = Field(default=1, ge=0, le=100)
    shutdown_timeout_seconds: float = Field(default=30.0, ge=0, le=3_600)
    execution_max_attempts: int = Field(default=3, ge=1, le=25)
    execution_backoff_ms: int = Field(default=1_000, ge=0)
    max_running_per_org: int = Field(default=5, ge=1, le=10_000)
    # Fan-out bounds of one execution (ADR 0008): items a `for_each` may render, for-each items
    # run at once whatever `max_parallel` says, and step + item runs (retries included) in all.
    max_for_each_items: int = Field(default=1_000, ge=1, le=10_000)
    max_parallel_items: int = Field(default=20, ge=1, le=200)
    # Steps and items of one execution doing work at once, all together (its steps' parallel
    # branches times their items): one execution's share of a worker, whatever it fans out.
    max_parallel_per_execution: int = Field(default=20, ge=1, le=1_000)
    max_step_runs_per_execution: int = Field(default=10_000, ge=1, le=1_000_000)
    # Live execution events over Server-Sent Events (docs/WORKFLOWS.md "Live events"): open
    # streams per person across every API process, how often an open stream checks its
    # caller's access again (at most 60 s), and the comment heartbeat that keeps proxies open.
    live_streams_per_user: int = Field(default=5, ge=1, le=100)
    live_stream_recheck_seconds: float = Field(default=30.0, gt=0, le=60)
    live_stream_heartbeat_seconds: float = Field(default=15.0, gt=0, le=60)
    # Sub-workflow executions one root execution may start, children of children included.
    max_descendant_executions: int = Field(default=1_000, ge=0, le=100_000)
    # How often a worker looks for waiting executions whose time has come (waits, approval
    # timeouts, deadlines): a wait ends up to this much after its time.
    wake_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    # Executions of one organization waiting (queued) at once; beyond it execute answers 429.
    max_queued_per_org: int = Field(default=10_000, ge=1, le=1_000_000)
    # How long an Idempotency-Key (or a webhook delivery's id) answers with its first execution.
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60, le=7 * 86_400)
    # Triggers (docs/TRIGGERS.md). How often every worker looks for schedule ticks that are due
    # (a tick is queued up to this much after its time, plus the time to start it).
    schedule_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    # A tick later than this when a worker first sees it was missed (every worker was down):
    # the schedule's `catch_up` decides whether it runs.
    schedule_misfire_seconds: float = Field(default=30.0, ge=1, le=86_400)
    max_schedules_per_org: int = Field(default=500, ge=0, le=100_000)
    max_triggers_per_org: int = Field(default=200, ge=0, le=100_000)
    # Requests one webhook trigger accepts per minute (verified or not), across API processes.
    trigger_rate_limit_per_minute: int = Field(default=600, ge=1, le=1_000_000)
    reconcile_interval_seconds: float = Field(default=30.0, gt=0)
    # Non-terminal executions younger than this are left alone by the reconciler.
    reconcile_grace_seconds: float = Field(default=60.0, ge=0)
    # Finished executions older than this (by finished_at) are deleted with their steps, webhook
    # deliveries and ai_usage rows (summed per day into ai_usage_daily) by the housekeeping.
    execution_retention_days: int = Field(default=90, ge=1, le=36_500)
    # The newest this many versions of each workflow are kept (the current one always among
    # them); older ones are deleted by the housekeeping (workflows/retention.py). No 0, no
    # "keep all": saving in a loop must not grow the history without bound (docs/SECURITY.md).
    workflow_versions_kept: int = Field(default=100, ge=1, le=10_000)

    # --- workflow steps ------------------------------------------------------------------------
    http_step_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    http_step_max_response_bytes: int = Field(default=1_048_576, ge=1_024)
    # Hosts, IP addresses or CIDR ranges that tenant-chosen URLs (`http` steps, tool and AI
    # connections' base URLs) may reach although they are private, loopback or link-local
    # (comma-separated), e.g. "127.0.0.1,10.1.0.0/16,crm.internal".
    outbound_allowed_hosts: str = ""
    # Outbound connection reuse (src/taskloom/outbound_pool.py): HTTP clients kept per process,
    # per organization and per connection / webhook endpoint / http-step origin, least recently
    # used closed beyond the maximum; 0 turns reuse off (every call opens its own connection).
    outbound_pool_max_clients: int = Field(default=256, ge=0, le=100_000)
    outbound_pool_max_connections: int = Field(default=10, ge=1, le=1_000)  # sockets per client
    outbound_pool_idle_seconds: float = Field(default=60.0, gt=0, le=3_600)  # then closed
    # Templates other than plain lookups render in a child process, killed past this long
    # (the step fails with template_too_expensive) and capped at this much memory.
    template_render_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    template_render_memory_mb: int = Field(default=256, ge=128, le=16_384)

    # --- AI steps (docs/AI.md) -------------------------------------------------------------------
    # Instance-wide provider keys and base URLs; an organization's own `anthropic` / `openai`
    # connection takes precedence. Unset key: the provider is usable only through connections.
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None  # default: the SDK's (https://api.anthropic.com)
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None  # any OpenAI-compatible server, e.g. http://vllm:8000/v1
    ai_timeout_seconds: float = Field(default=120.0, gt=0, le=900)
    ai_max_retries: int = Field(default=2, ge=0, le=10)  # SDK retries on 408/409/429/5xx
    ai_default_max_tokens: int = Field(default=1024, ge=1, le=200_000)
    ai_model_catalog: Path | None = None  # default: the packaged taskloom/ai/models.json
    # Under this share of the monthly budget left, steps naming a category use the next
    # cheaper tier (the usage row records `downgraded_from`).
    ai_downgrade_below_fraction: float = Field(default=0.2, ge=0, le=1)
    # A reservation whose call never settled (worker killed) is released after this long.
    ai_reservation_ttl_seconds: int = Field(default=1800, ge=60)
    # What each organization may spend per calendar month (UTC) on the instance's keys above,
    # on top of its own budget; 0: organizations must bring their own key (a connection).
    ai_instance_key_monthly_budget_usd: Decimal = Field(
        default=Decimal(5), ge=0, le=10_000_000, max_digits=14, decimal_places=6
    )

    # --- tool connections (docs/TOOLS.md) ------------------------------------------------------
    tool_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    tool_cache_ttl_seconds: int = Field(default=60, ge=0, le=86_400)  # 0: no caching
    breaker_failure_threshold: int = Field(default=5, ge=1, le=1000)
    breaker_reset_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Where breakers keep their state (docs/SCALING.md "Many hosts"): `process`, each process
    # its own; `redis`, one per connection shared by every process (falls back to `process`
    # while Redis does not answer). With `redis`, a breaker seen closed is trusted this long
    # before Redis is asked again (0: every call asks).
    breaker_sharing: BreakerSharing = BreakerSharing.PROCESS
    breaker_shared_cache_seconds: float = Field(default=1.0, ge=0, le=60)

    # --- webhooks (docs/WEBHOOKS.md) -----------------------------------------------------------
    webhook_max_attempts: int = Field(default=5, ge=1, le=25)
    webhook_backoff_ms: int = Field(default=2_000, ge=10)  # doubles per attempt
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Failed attempts in a row (across events) after which an endpoint is disabled.
    webhook_disable_after_failures: int = Field(default=25, ge=1)
    webhook_dispatch_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    # An organization's deliveries in the queue at once (the rest wait in the outbox), and its
    # endpoints: one tenant's events cannot fill the delivery slots every tenant shares.
    webhook_max_queued_per_org: int = Field(default=20, ge=1, le=10_000)
    webhook_max_endpoints_per_org: int = Field(default=20, ge=1, le=1_000)

    # --- GDPR (docs/GDPR.md) -------------------------------------------------------------------
    # Erasure also empties the input/output of executions the person started.
    gdpr_erase_execution_payloads: bool = True
    gdpr_export_max_per_hour: int = Field(default=10, ge=1)
    # Streamed exports read from their own pool of this many privileged connections per process
    # (no overflow): sign-in's pool is never theirs to exhaust; beyond it, 503 exports_busy.
    gdpr_export_pool_size: int = Field(default=2, ge=1, le=50)
    # A chunk the client has not taken within this long abandons the export (and its snapshot).
    gdpr_export_chunk_send_timeout_seconds: float = Field(default=30.0, gt=0, le=3_600)
    # Bounds on each export connection: one statement (a cursor fetch), and time idle inside
    # the snapshot's transaction (a backstop for a consumer that stops asking for chunks).
    gdpr_export_statement_timeout_seconds: float = Field(default=60.0, gt=0, le=3_600)
    gdpr_export_idle_in_transaction_timeout_seconds: float = Field(default=120.0, gt=0, le=3_600)
    gdpr_erasure_max_per_hour: int = Field(default=5, ge=1)

    # --- HTTP ------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    # Where people reach this instance (e.g. https://taskloom.example.com): links in webhook
    # events (an approval's page) are built on it; without it they are paths ("/ui/...").
    public_url: str | None = Field(default=None, max_length=500, pattern=r"^https?://[^\s]+$")
    api_port: int = Field(default=8000, ge=1, le=65535)
    forwarded_allow_ips: str = "127.0.0.1"
    max_request_body_bytes: int = Field(default=1_048_576, ge=1024)

    # --- auth ------------------------------------------------------------------------------------
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    jwt_issuer: str = "taskloom"
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=300)
    password_min_length: int = Field(default=10, ge=8, le=128)
    password_hash_time_cost: int = Field(default=3, ge=1, le=10)
    password_hash_memory_kib: int = Field(default=65_536, ge=8, le=1_048_576)
    password_hash_parallelism: int = Field(default=4, ge=1, le=16)
    login_max_failures_per_account: int = Field(default=10, ge=1)
    login_max_failures_per_ip: int = Field(default=50, ge=1)
    login_failure_window_seconds: int = Field(default=900, ge=10)
    # Registrations (successful or not) allowed per client IP within the window, then 429.
    register_max_per_ip: int = Field(default=20, ge=1)
    register_window_seconds: int = Field(default=3600, ge=10)
    # Self-registration; unset: open in development and test, invite in production.
    registration: Registration | None = None

    # --- API rate limits (docs/SECURITY.md "Rate limits") -------------------------------------
    # Requests per RATE_LIMIT_WINDOW_SECONDS per API key or signed-in session (the web UI shares
    # its session's), by class of route: reads (GET/HEAD), writes (other methods), execute
    # (starting or retrying an execution); and to /auth/* per client IP. 429 + Retry-After past
    # them. false: none of these (sign-in and registration keep their own limits above).
    rate_limits_enabled: bool = True
    rate_limit_window_seconds: int = Field(default=60, ge=1, le=86_400)
    rate_limit_reads: int = Field(default=1200, ge=1)
    rate_limit_writes: int = Field(default=300, ge=1)
    rate_limit_execute: int = Field(default=600, ge=1)
    rate_limit_auth_per_ip: int = Field(default=300, ge=1)

    # --- principal cache (docs/SECURITY.md "Principal cache") ----------------------------------
    # Authenticated principals kept per API process (LRU of AUTH_CACHE_SIZE tokens) and trusted
    # again only when Redis vouches for them: a request then needs no PostgreSQL lookup to
    # authenticate. An entry is looked up again after AUTH_CACHE_TTL_SECONDS (this is also the
    # longest a revocation could go unnoticed if Redis was unreachable when it was published).
    # 0 for either: no cache, every request looks its principal up in PostgreSQL.
    auth_cache_size: int = Field(default=10_000, ge=0, le=1_000_000)
    auth_cache_ttl_seconds: float = Field(default=60.0, ge=0, le=3_600)

    # --- secrets at rest -------------------------------------------------------------------------
    # AES-256-GCM keys for stored credentials, "id:base64key[,id:base64key...]": the first
    # encrypts, all decrypt (rotation: put the new key first, run `taskloom keys rotate`).
    credential_encryption_keys: SecretStr | None = None

    # --- metrics and SLOs (docs/OBSERVABILITY.md) ----------------------------------------------
    metrics_token: SecretStr | None = None  # set: GET /metrics needs "Authorization: Bearer …"
    # prometheus_client's own variable, read again here to serve the shared directory's metrics.
    prometheus_multiproc_dir: Path | None = None
    # `taskloom worker` serves its own /metrics here (when no PROMETHEUS_MULTIPROC_DIR is shared).
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    sli_window_seconds: float = Field(default=300.0, ge=10, le=86_400)
    slo_availability_target: float = Field(default=0.999, gt=0, lt=1)
    slo_latency_p95_seconds: float = Field(default=0.3, gt=0)

    # --- tracing (docs/OBSERVABILITY.md) -------------------------------------------------------
    otel_exporter_otlp_endpoint: str | None = None  # e.g. http://otel-collector:4318
    # The standard variable; unset: taskloom-api, taskloom-worker, or taskloom (`taskloom up`).
    otel_service_name: str | None = None
    sentry_dsn: SecretStr | None = None  # unset: errors are not sent anywhere

    # --- logging ---------------------------------------------------------------------------------
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")
    # One line per request (method, route template, status, duration, request id; no query).
    access_log: bool = True
    log_json: bool | None = None  # default: JSON in production, console otherwise

    @field_validator("credential_encryption_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parse_key_list(value.get_secret_value())  # raises ValueError naming the problem
        return value

    def credential_keys(self) -> list[tuple[str, bytes]]:
        """The credential keys, current first. Without CREDENTIAL_ENCRYPTION_KEYS (development
        only; production refuses to start) one key named "dev" is derived from JWT_SECRET."""
        if self.credential_encryption_keys is not None:
            return parse_key_list(self.credential_encryption_keys.get_secret_value())
        derived = hashlib.sha256(
            b"taskloom credential key:" + self.jwt_secret.get_secret_value().encode()
        ).digest()
        return [("dev", derived)]

    @field_validator("redis_key_prefix")
    @classmethod
    def _prefix_is_plain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(c in value for c in "*?[]\\") or any(c.isspace() for c in value):
            raise ValueError("REDIS_KEY_PREFIX must not contain spaces or * ? [ ] \\")
        if value.count("{") != value.count("}") or value.count("{") > 1:
            raise ValueError("REDIS_KEY_PREFIX may hold one Cluster hash tag, e.g. {production}:")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_plain(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        unknown = sorted({k for k, _ in parse_qsl(parts.query)} - {"db"})
        if unknown:
            raise ValueError(
                f"REDIS_URL query parameter(s) {', '.join(unknown)} are not read; set TLS "
                "options with REDIS_TLS_* and credentials with REDIS_USERNAME / REDIS_PASSWORD"
            )
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels_parse(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_sentinels(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _cluster_nodes_parse(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_addresses(value, setting="REDIS_CLUSTER_NODES", default_port=6379, what="a node")
        return value

    @model_validator(mode="after")
    def _one_redis_mode(self) -> Self:
        if self.redis_cluster and self.redis_sentinels:
            raise ValueError(
                "REDIS_CLUSTER and REDIS_SENTINELS exclude each other: a Redis Cluster fails "
                "over by itself (name one of its nodes in REDIS_URL), Sentinel watches one master"
            )
        if self.redis_url and self.redis_sentinels:
            raise ValueError("set REDIS_URL (one server) or REDIS_SENTINELS (Sentinel), not both")
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError("set REDIS_SENTINELS and REDIS_SENTINEL_MASTER together")
        if self.redis_cluster_nodes and not self.redis_cluster:
            raise ValueError("REDIS_CLUSTER_NODES needs REDIS_CLUSTER=true")
        if self.redis_cluster:
            parts = urlsplit(self.redis_url or "")
            if not self.redis_url or parts.scheme == "unix":
                raise ValueError(
                    "REDIS_CLUSTER=true needs REDIS_URL naming a node of the cluster "
                    "(redis://host:port or rediss://host:port)"
                )
            db = dict(parse_qsl(parts.query)).get("db") or parts.path.strip("/") or "0"
            if db != "0":
                raise ValueError(f"a Redis Cluster has only database 0: drop /{db} from REDIS_URL")
        return self

    @model_validator(mode="after")
    def _tls_files_in_pairs(self) -> Self:
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError("set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE together")
        return self

    @model_validator(mode="after")
    def _production_is_safe(self) -> Self:
        if self.taskloom_env is not Environment.PRODUCTION or not _production_guard.get():
            return self
        problems = self.production_problems()
        if problems:
            raise InsecureConfiguration("refusing to start in production: " + "; ".join(problems))
        return self

    def production_problems(self) -> list[str]:
        """What production refuses in this configuration (empty when it may start)."""
        problems = []
        secret = self.jwt_secret.get_secret_value()
        if secret == DEV_JWT_SECRET or len(secret) < MIN_JWT_SECRET_LENGTH:
            problems.append(
                f"JWT_SECRET must be set to a random value of at least {MIN_JWT_SECRET_LENGTH} "
                "characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        if self.credential_encryption_keys is None:
            problems.append("CREDENTIAL_ENCRYPTION_KEYS must be set (id:base64 of 32 random bytes)")
        if self.database_url is None:
            problems.append("DATABASE_URL must point at a real PostgreSQL server")
        if not self.redis_configured:
            problems.append("REDIS_URL (or REDIS_SENTINELS) must point at a real Redis server")
        if self.database_app_url is None and self.database_app_password is None:
            problems.append(
                "set DATABASE_APP_URL or DATABASE_APP_PASSWORD for the application role"
            )
        problems += self.redis_problems()
        return problems

    def redis_problems(self) -> list[str]:
        """The Redis part of the production guard (each one has an explicit opt-out)."""
        if not self.redis_configured:
            return []
        problems = []
        if not self.redis_allow_insecure:
            if not self.redis_uses_tls and not self.redis_is_local:
                problems.append(
                    "REDIS_SENTINELS are plaintext to a non-loopback host: set "
                    "REDIS_SENTINEL_TLS=true (or REDIS_ALLOW_INSECURE=true on a private network "
                    "you trust)"
                    if self.redis_sentinels
                    else "REDIS_URL is plaintext to a non-loopback host: use rediss:// "
                    "(or REDIS_ALLOW_INSECURE=true on a private network you trust)"
                )
            if not self.redis_has_password:
                problems.append("Redis has no password: set REDIS_PASSWORD or put it in REDIS_URL")
            if not self.key_prefix:
                problems.append("REDIS_KEY_PREFIX is empty: keys of environments would mix")
        unverified = self.redis_uses_tls and not self.redis_tls_verify
        if unverified and not self.redis_allow_unverified_tls:
            problems.append(
                "REDIS_TLS_VERIFY=false turns off certificate checks: give the server's CA in "
                "REDIS_TLS_CA_FILE instead (or REDIS_ALLOW_UNVERIFIED_TLS=true)"
            )
        return problems

    # --- derived values ------------------------------------------------------------------------
    @property
    def is_production(self) -> bool:
        return self.taskloom_env is Environment.PRODUCTION

    @property
    def key_prefix(self) -> str:
        """The prefix of every Redis key this deployment writes."""
        if self.redis_key_prefix is not None:
            return self.redis_key_prefix
        return f"{self.taskloom_env.value}:"

    @property
    def redis_mode(self) -> str:
        """`server`, `sentinel` or `cluster`: what /health/redis and the logs call the setup."""
        return "cluster" if self.redis_cluster else "sentinel" if self.redis_sentinels else "server"

    @property
    def redis_spreads_keys(self) -> bool:
        """Under Redis Cluster, with a prefix that is no hash tag: keys spread over the slots,
        and those used together carry a tag of their own (taskloom/redis/keys.py)."""
        return self.redis_cluster and "{" not in self.key_prefix

    @property
    def bullmq_prefix(self) -> str:
        """BullMQ's key prefix, under the same environment prefix: e.g. `production:bull`. Under
        Redis Cluster a hash tag keeps each queue's keys (its scripts touch many) in one slot:
        `production:{production:bull}` (a prefix that is a hash tag already does that)."""
        if self.redis_spreads_keys:
            return f"{self.key_prefix}{{{self.key_prefix}bull}}"
        return f"{self.key_prefix}bull"

    @property
    def redis_cluster_addresses(self) -> list[tuple[str, int]]:
        """The node of REDIS_URL, then REDIS_CLUSTER_NODES, as (host, port); empty otherwise."""
        if not self.redis_cluster:
            return []
        parts = urlsplit(self.redis_url or "")
        first = [(parts.hostname or "localhost", parts.port or 6379)]
        more = self.redis_cluster_nodes
        return first + (
            parse_addresses(more, setting="REDIS_CLUSTER_NODES", default_port=6379, what="a node")
            if more
            else []
        )

    @property
    def redis_configured(self) -> bool:
        """A real Redis is named (REDIS_URL or REDIS_SENTINELS); else the embedded one runs."""
        return bool(self.redis_url or self.redis_sentinels)

    @property
    def redis_sentinel_addresses(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty without Sentinel."""
        return parse_sentinels(self.redis_sentinels) if self.redis_sentinels else []

    @property
    def redis_uses_tls(self) -> bool:
        if self.redis_sentinels:
            return self.redis_sentinel_tls
        return bool(self.redis_url) and urlsplit(self.redis_url or "").scheme == "rediss"

    @property
    def redis_is_local(self) -> bool:
        """A unix socket or a loopback address: traffic never leaves the machine. With
        Sentinel, every Sentinel is on loopback (the master they name is only known at run
        time; Sentinels name the addresses their data nodes announce)."""
        if self.redis_sentinels:
            return all(_is_loopback(host) for host, _ in self.redis_sentinel_addresses)
        if self.redis_cluster:
            return all(_is_loopback(host) for host, _ in self.redis_cluster_addresses)
        parts = urlsplit(self.redis_url or "")
        if parts.scheme == "unix":
            return True
        return _is_loopback(parts.hostname or "localhost")

    @property
    def redis_has_password(self) -> bool:
        if self.redis_password is not None and self.redis_password.get_secret_value():
            return True
        return bool(urlsplit(self.redis_url or "").password)

    @property
    def registration_mode(self) -> Registration:
        """REGISTRATION, or the environment's default: production is safe when it is unset."""
        if self.registration is not None:
            return self.registration
        return Registration.INVITE if self.is_production else Registration.OPEN

    @property
    def uses_json_logs(self) -> bool:
        return self.is_production if self.log_json is None else self.log_json

    def app_database_url(self) -> str:
        """The URL of the non-privileged application role."""
        if self.database_app_url:
            return self.database_app_url
        if not self.database_url:
            raise ValueError("DATABASE_URL is not set (start the embedded default first)")
        password = (
            self.database_app_password.get_secret_value() if self.database_app_password else None
        )
        return replace_url_credentials(self.database_url, self.database_app_role, password)


_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_key_list(value: str) -> list[tuple[str, bytes]]:
    """Parse "id:base64key,id:base64key" (current key first) into (id, 32-byte key) pairs."""
    keys: list[tuple[str, bytes]] = []
    for position, entry in enumerate(value.split(","), start=1):
        key_id, sep, encoded = entry.strip().partition(":")
        if not sep or not _KEY_ID.match(key_id):
            raise ValueError(
                f"CREDENTIAL_ENCRYPTION_KEYS entry {position} must look like "
                "id:base64key (id: letters, digits, . _ -)"
            )
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"CREDENTIAL_ENCRYPTION_KEYS key {key_id!r} is not base64") from None
        if len(raw) != 32:
            raise ValueError(
                f"CREDENTIAL_ENCRYPTION_KEYS key {key_id!r} must decode to exactly 32 bytes"
            )
        if any(existing == key_id for existing, _ in keys):
            raise ValueError(f"CREDENTIAL_ENCRYPTION_KEYS names key {key_id!r} twice")
        keys.append((key_id, raw))
    return keys


SENTINEL_PORT = 26379


def parse_sentinels(value: str) -> list[tuple[str, int]]:
    """Parse REDIS_SENTINELS, "host:port,host:port" (`[v6]:port`; port 26379 when left out)."""
    return parse_addresses(
        value,
        setting="REDIS_SENTINELS",
        default_port=SENTINEL_PORT,
        what="a Sentinel's address; its credentials go in REDIS_SENTINEL_PASSWORD",
    )


def parse_addresses(
    value: str, *, setting: str, default_port: int, what: str
) -> list[tuple[str, int]]:
    """Parse "host:port,host:port" (`[v6]:port`; `default_port` when left out)."""
    addresses: list[tuple[str, int]] = []
    for position, entry in enumerate(value.split(","), start=1):
        parts = urlsplit("//" + entry.strip())
        try:
            port = parts.port if parts.port is not None else default_port
        except ValueError:
            port = 0
        if not parts.hostname or not 0 < port < 65536 or "@" in entry or parts.path:
            shown = "" if "@" in entry else f" ({entry.strip()!r})"  # may hold a password
            raise ValueError(f"{setting} entry {position}{shown} must look like host:port ({what})")
        addresses.append((parts.hostname, port))
    return addresses


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def replace_url_credentials(url: str, user: str, password: str | None) -> str:
    """Return the URL with its user (and password) replaced; keeps host, port, path, query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = quote(user, safe="")
    if password:
        netloc += ":" + quote(password, safe="")
    netloc += "@" + host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_url(url: str | None) -> str:
    """The URL with any password replaced, for logs and error messages."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
