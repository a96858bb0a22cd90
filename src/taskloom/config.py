"""The one configuration object. Nothing else in Taskloom reads os.environ.

Every field is documented in `.env.example` with its default; a test keeps the two in step.
"""

from __future__ import annotations

import base64
import binascii
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Self
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "taskloom-development-secret-do-not-use-in-production"  # noqa: S105
MIN_JWT_SECRET_LENGTH = 32


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class InsecureConfiguration(RuntimeError):
    """Production was asked to start with an unsafe configuration. Not a ValueError, so pydantic
    lets it through unwrapped and the operator reads one clear sentence."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
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
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_statement_timeout_ms: int = Field(default=30_000, ge=0)

    # --- Redis ---------------------------------------------------------------------------------
    redis_url: str | None = None
    redis_key_prefix: str | None = None  # default: "{environment}:"
    redis_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    # --- HTTP ------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
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

    # --- secrets at rest -------------------------------------------------------------------------
    credential_encryption_key: SecretStr | None = None  # base64 of 32 bytes (AES-256-GCM)

    # --- logging ---------------------------------------------------------------------------------
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")
    log_json: bool | None = None  # default: JSON in production, console otherwise

    @field_validator("credential_encryption_key")
    @classmethod
    def _key_is_32_bytes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        try:
            raw = base64.b64decode(value.get_secret_value(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("CREDENTIAL_ENCRYPTION_KEY must be base64") from exc
        if len(raw) != 32:
            raise ValueError("CREDENTIAL_ENCRYPTION_KEY must decode to exactly 32 bytes")
        return value

    @model_validator(mode="after")
    def _production_is_safe(self) -> Self:
        if self.taskloom_env is not Environment.PRODUCTION:
            return self
        problems = []
        secret = self.jwt_secret.get_secret_value()
        if secret == DEV_JWT_SECRET or len(secret) < MIN_JWT_SECRET_LENGTH:
            problems.append(
                f"JWT_SECRET must be set to a random value of at least {MIN_JWT_SECRET_LENGTH} "
                "characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        if self.credential_encryption_key is None:
            problems.append("CREDENTIAL_ENCRYPTION_KEY must be set (base64 of 32 random bytes)")
        if self.database_url is None:
            problems.append("DATABASE_URL must point at a real PostgreSQL server")
        if self.redis_url is None:
            problems.append("REDIS_URL must point at a real Redis server")
        if self.database_app_url is None and self.database_app_password is None:
            problems.append(
                "set DATABASE_APP_URL or DATABASE_APP_PASSWORD for the application role"
            )
        if problems:
            raise InsecureConfiguration("refusing to start in production: " + "; ".join(problems))
        return self

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
