"""Request and response bodies of the organization and member routes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from taskloom.auth.schemas import Email, StrictModel
from taskloom.orgs.models import INVITABLE_ROLES, Role


class OrgCreate(StrictModel):
    name: str = Field(min_length=1, max_length=200)


class OrgUpdate(StrictModel):
    """Any of the fields, at least one. `sso_required` and `sso_break_glass_user_id` (an owner,
    or null for none) are changed by owners only (docs/SSO.md)."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    sso_required: bool | None = None
    sso_break_glass_user_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> OrgUpdate:
        if not self.model_fields_set:
            raise ValueError("name at least one of: name, sso_required, sso_break_glass_user_id")
        for field in ("name", "sso_required"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self

    @property
    def changes_sso(self) -> bool:
        return bool({"sso_required", "sso_break_glass_user_id"} & self.model_fields_set)


class OrgOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    slug: str
    # Password sessions are refused here but the break-glass owner's (docs/SSO.md).
    sso_required: bool
    sso_break_glass_user_id: uuid.UUID | None
    created_at: datetime


class MyOrgOut(BaseModel):
    org_id: uuid.UUID
    name: str
    slug: str
    role: Role
    current: bool


class MemberInvite(StrictModel):
    email: Email
    role: Role = Role.MEMBER

    @field_validator("role")
    @classmethod
    def _not_owner(cls, role: Role) -> Role:
        if role not in INVITABLE_ROLES:
            raise ValueError(
                "an invitation cannot make someone an owner: invite them, then promote the member"
            )
        return role


class InvitationCreated(BaseModel):
    """The same answer whether or not the address has an account."""

    invitation_id: uuid.UUID


class PendingInvitationOut(BaseModel):
    id: uuid.UUID
    email: str
    role: Role
    invited_by: uuid.UUID | None
    created_at: datetime
    expires_at: datetime


class ReceivedInvitationOut(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID
    org_name: str
    role: Role
    created_at: datetime
    expires_at: datetime


class InvitationAccepted(BaseModel):
    org_id: uuid.UUID
    role: Role


class MemberUpdate(StrictModel):
    role: Role


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
    display_name: str
    role: Role
    joined_at: datetime
