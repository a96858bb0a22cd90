"""Request and response bodies of /api/connections. Credentials go in, never come out: a
response says only which credential fields are set."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

Provider = Literal["notion", "linear", "github", "mcp", "http", "anthropic", "openai"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_base_url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        raise ValueError("base_url is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("base_url must be an absolute http:// or https:// URL")
    if url.userinfo:
        raise ValueError("base_url must not hold credentials; put them in `credentials`")
    if url.query or url.fragment:
        raise ValueError("base_url must not have a query or fragment")
    return value.rstrip("/")


class ConnectionCreate(StrictModel):
    # Credential values are hidden from validation errors, which echo inputs otherwise.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    provider: Provider
    name: str = Field(min_length=1, max_length=200)
    base_url: str | None = Field(default=None, max_length=2048)
    credentials: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    _base_url = field_validator("base_url")(_check_base_url)


class ConnectionUpdate(StrictModel):
    """Fields left out stay as they are; `credentials` replaces all stored credentials;
    `base_url: null` returns to the provider's default."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    base_url: str | None = Field(default=None, max_length=2048)
    credentials: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    enabled: bool | None = None

    _base_url = field_validator("base_url")(_check_base_url)


class ConnectionOut(BaseModel):
    id: uuid.UUID
    provider: str
    name: str
    base_url: str | None
    effective_base_url: str
    config: dict[str, Any]
    enabled: bool
    credential_fields: list[str]  # which fields are set; their values are never returned
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class ToolOut(BaseModel):
    name: str
    description: str
    read_only: bool
    input_schema: dict[str, Any]


class ConnectionTestResult(BaseModel):
    ok: bool
    latency_ms: int
    details: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
