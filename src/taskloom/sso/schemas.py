"""Request and response bodies of /api/admin/sso (providers, group mappings) and /auth/oidc."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from taskloom.auth.schemas import Password
from taskloom.sso.models import SLUG_PATTERN

# Asymmetric JWS algorithms only: a symmetric one (HS256) would make the client secret, which
# the provider also knows, a key anyone holding it could sign ID tokens with.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_ALGORITHMS = ["RS256", "ES256", "PS256"]
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_B64URL = r"^[A-Za-z0-9_-]{43}$"  # a base64url SHA-256, unpadded (RFC 7636 S256)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _scopes(value: list[str]) -> list[str]:
    if "openid" not in value:
        raise ValueError('must include "openid"')
    if any(not s or " " in s for s in value):
        raise ValueError("each scope is one word")
    return list(dict.fromkeys(value))


def _algorithms(value: list[str]) -> list[str]:
    unknown = sorted(set(value) - ALLOWED_ALGORITHMS)
    if unknown:
        allowed = ", ".join(sorted(ALLOWED_ALGORITHMS))
        raise ValueError(f"not allowed: {', '.join(unknown)} (asymmetric only: {allowed})")
    return list(dict.fromkeys(value))


def _domains(value: list[str]) -> list[str]:
    lowered = [d.strip().lower() for d in value]
    invalid = [d for d in lowered if not _DOMAIN.match(d)]
    if invalid:
        raise ValueError(f"not a domain name: {invalid[0][:100]!r}")
    return list(dict.fromkeys(lowered))


Slug = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=63)]
Scopes = Annotated[list[str], Field(min_length=1, max_length=50), AfterValidator(_scopes)]
Algorithms = Annotated[list[str], Field(min_length=1, max_length=10), AfterValidator(_algorithms)]
Domains = Annotated[list[str], Field(max_length=100), AfterValidator(_domains)]
ClaimName = Annotated[str, Field(min_length=1, max_length=200)]


class ProviderCreate(StrictModel):
    slug: Slug
    display_name: str = Field(min_length=1, max_length=200)
    issuer: str = Field(min_length=1, max_length=500)
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: str = Field(min_length=1, max_length=2000)
    scopes: Scopes = Field(default_factory=lambda: ["openid", "email", "profile"])
    groups_claim: ClaimName | None = None
    enabled: bool = True
    jit: bool = False
    email_verified_claim: ClaimName = "email_verified"
    verified_email_domains: Domains = Field(default_factory=list)
    algorithms: Algorithms = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS))


class ProviderUpdate(StrictModel):
    """Fields left out stay as they are; `client_secret` replaces the stored one."""

    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    issuer: str | None = Field(default=None, min_length=1, max_length=500)
    client_id: str | None = Field(default=None, min_length=1, max_length=500)
    client_secret: str | None = Field(default=None, min_length=1, max_length=2000)
    scopes: Scopes | None = None
    groups_claim: ClaimName | None = None
    enabled: bool | None = None
    jit: bool | None = None
    email_verified_claim: ClaimName | None = None
    verified_email_domains: Domains | None = None
    algorithms: Algorithms | None = None


class ProviderOut(BaseModel):
    id: uuid.UUID
    slug: str
    display_name: str
    issuer: str
    client_id: str
    has_client_secret: bool = True
    scopes: list[str]
    groups_claim: str | None
    enabled: bool
    jit: bool
    email_verified_claim: str
    verified_email_domains: list[str]
    algorithms: list[str]
    redirect_uri: str = Field(description="Register this at the provider")
    created_at: datetime
    updated_at: datetime


class MappingCreate(StrictModel):
    group: str = Field(min_length=1, max_length=1000, description="The claim's string, exactly")
    org_id: uuid.UUID
    role: str = Field(description="viewer, member or admin (never owner)")


class MappingOut(BaseModel):
    id: uuid.UUID
    group: str
    org_id: uuid.UUID
    role: str
    created_at: datetime


class ProviderLink(BaseModel):
    """An enabled provider as the sign-in page and the CLI offer it."""

    slug: str
    display_name: str
    start_url: str


class ExchangeRequest(StrictModel):
    code: str = Field(min_length=1, max_length=200)
    code_verifier: str = Field(min_length=43, max_length=128, pattern=r"^[A-Za-z0-9._~-]+$")


class LinkRequest(StrictModel):
    link_token: str = Field(min_length=1, max_length=200)
    password: Password


CODE_CHALLENGE_PATTERN = _B64URL
