"""The configuration object: safe defaults, refusals in production, documented settings."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

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
        ({"credential_encryption_key": None}, "CREDENTIAL_ENCRYPTION_KEY"),
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


def test_encryption_key_must_be_32_bytes_of_base64() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Settings(_env_file=None, credential_encryption_key=base64.b64encode(b"short").decode())  # type: ignore[call-arg]


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
