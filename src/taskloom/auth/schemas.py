"""Request and response bodies of the auth routes."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from taskloom.orgs.models import Role

if TYPE_CHECKING:
    from taskloom.auth.service import TokenPair

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def _email(value: str) -> str:
    value = value.strip().lower()
    if len(value) > 320 or not _EMAIL.match(value):
        raise ValueError("not a valid email address")
    return value


Email = Annotated[str, AfterValidator(_email)]
Password = Annotated[str, Field(min_length=1, max_length=256)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterRequest(StrictModel):
    email: Email
    password: Password
    display_name: str = Field(min_length=1, max_length=200)
    organization_name: str | None = Field(default=None, min_length=1, max_length=200)


class LoginRequest(StrictModel):
    email: Email
    password: Password
    org_id: uuid.UUID | None = None


class PasswordChangeRequest(StrictModel):
    current_password: Password
    new_password: Password


class PasswordChanged(BaseModel):
    sessions_revoked: int = Field(description="The person's other sessions, now signed out")


class RefreshRequest(StrictModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class SwitchOrgRequest(StrictModel):
    org_id: uuid.UUID


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a scheme name, not a secret)
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user_id: uuid.UUID
    org_id: uuid.UUID | None

    @classmethod
    def of(cls, pair: TokenPair) -> TokenResponse:
        """The answer of a sign-in, refresh or SSO exchange that issued `pair`."""
        return cls(
            access_token=pair.access_token,
            expires_in=pair.expires_in,
            refresh_token=pair.refresh_token,
            refresh_expires_in=pair.refresh_expires_in,
            user_id=pair.user_id,
            org_id=pair.org_id,
        )


class AccessTokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a scheme name, not a secret)
    expires_in: int
    org_id: uuid.UUID


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    display_name: str
    is_superuser: bool


class MembershipOut(BaseModel):
    org_id: uuid.UUID
    name: str
    slug: str
    role: Role


class MeResponse(BaseModel):
    user: UserOut
    org_id: uuid.UUID | None
    role: Role | None
    auth: Literal["session", "api_key"]
    memberships: list[MembershipOut]


class ApiKeyCreate(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role = Role.MEMBER
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str
    role: Role
    org_id: uuid.UUID
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself; shown only in this response")
