"""Request and response bodies of /api/secrets. A value goes in and never comes out."""

from __future__ import annotations

import ipaddress
import re
import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$"
MAX_VALUE_CHARS = 65_536
MAX_ALLOWED_HOSTS = 50
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def normalise_host(value: str) -> str:
    """A host as requests name it: lower case, no brackets, no trailing dot."""
    return value.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()


def _check_hosts(hosts: list[str]) -> list[str]:
    checked: list[str] = []
    for raw in hosts:
        host = normalise_host(raw)
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            if not _HOST_NAME.match(host):
                raise ValueError(
                    f"{raw!r} is not a host name or IP address (no scheme, port, path or wildcard)"
                ) from None
        if host not in checked:
            checked.append(host)
    return checked


class SecretCreate(BaseModel):
    # The value is hidden from validation errors, which echo inputs otherwise.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(pattern=NAME_PATTERN)
    value: str = Field(min_length=4, max_length=MAX_VALUE_CHARS)
    description: str | None = Field(default=None, max_length=500)
    allowed_hosts: list[str] = Field(default_factory=list, max_length=MAX_ALLOWED_HOSTS)

    _hosts = field_validator("allowed_hosts")(_check_hosts)


class SecretReplace(BaseModel):
    """PUT: the whole secret again (value, description, allowed hosts); the name stays."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    value: str = Field(min_length=4, max_length=MAX_VALUE_CHARS)
    description: str | None = Field(default=None, max_length=500)
    allowed_hosts: list[str] = Field(default_factory=list, max_length=MAX_ALLOWED_HOSTS)

    _hosts = field_validator("allowed_hosts")(_check_hosts)


class SecretOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    allowed_hosts: list[str]
    created_by: uuid.UUID | None
    updated_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
