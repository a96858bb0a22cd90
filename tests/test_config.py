"""The configuration object: safe defaults, refusals in production, documented settings."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from taskloom.config import InsecureConfiguration, Settings, redact_url
from tests.factories import production_settings

ROOT = Path(__file__).resolve().parents[1]


def test_production_accepts_a_complete_configuration() -> None:
    settings = production_settings()
    assert settings.is_production
    assert settings.key_prefix == "production:"


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ({"jwt_secret": "taskloom-development-secret-do-not-use-in-production"}, "JWT_SECRET"),
        ({"jwt_secret": "short"}, "JWT_SECRET"),
        ({"credential_encryption_keys": None}, "CREDENTIAL_ENCRYPTION_KEYS"),
        ({"database_url": None}, "DATABASE_URL"),
        ({"redis_url": None}, "REDIS_URL"),
        ({"database_app_password": None}, "DATABASE_APP_PASSWORD"),
    ],
)
def test_production_refuses_insecure_settings(override: dict[str, object], complaint: str) -> None:
    with pytest.raises(InsecureConfiguration, match=complaint):
        production_settings(**override)


def test_development_defaults_need_nothing() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.key_prefix == "development:"
    assert settings.database_url is None  # the embedded default starts


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("k1:" + base64.b64encode(b"short").decode(), "'k1' must decode to exactly 32 bytes"),
        (base64.b64encode(b"k" * 32).decode(), "entry 1 must look like id:base64key"),
        ("k1:not base64!", "'k1' is not base64"),
        ("k1:{k},k1:{k}", "names key 'k1' twice"),
    ],
)
def test_encryption_keys_are_named_32_byte_keys(value: str, complaint: str) -> None:
    value = value.format(k=base64.b64encode(b"k" * 32).decode())
    with pytest.raises(ValueError, match=complaint):
        Settings(_env_file=None, credential_encryption_keys=value)  # type: ignore[call-arg]


def test_encryption_keys_list_the_current_key_first() -> None:
    new, old = base64.b64encode(b"n" * 32).decode(), base64.b64encode(b"o" * 32).decode()
    settings = Settings(_env_file=None, credential_encryption_keys=f"2026-12:{new}, 2026-01:{old}")  # type: ignore[call-arg]
    assert settings.credential_keys() == [("2026-12", b"n" * 32), ("2026-01", b"o" * 32)]


def test_app_url_is_derived_from_the_privileged_url() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url="postgresql://owner:pw@db.internal:5433/taskloom?sslmode=require",
        database_app_role="tl_app",
        database_app_password="s3cr@t",
    )
    assert settings.app_database_url() == (
        "postgresql://tl_app:s3cr%40t@db.internal:5433/taskloom?sslmode=require"
    )
    assert redact_url(settings.app_database_url()) == (
        "postgresql://tl_app:***@db.internal:5433/taskloom?sslmode=require"
    )


def test_env_example_documents_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = {m.lower() for m in re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE)}
    fields = set(Settings.model_fields)
    assert fields - documented == set(), "settings missing from .env.example"
    assert documented - fields == set(), ".env.example names settings that do not exist"


def test_a_refused_value_is_never_echoed_in_the_error() -> None:
    """A value with credentials in it (a URL with its password) is refused without being
    repeated: the error is printed at start-up, into logs."""
    with pytest.raises(ValidationError) as refused:
        Settings(public_url="ftp://admin:hunter2-secret@example.com/")
    assert "public_url" in str(refused.value)
    assert "hunter2-secret" not in str(refused.value)
