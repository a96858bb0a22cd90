"""Request and response bodies of the organization and member routes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from taskloom.auth.schemas import Email, StrictModel
from taskloom.orgs.models import INVITABLE_ROLES, Role


class OrgCreate(StrictModel):
    name: str = Field(min_length=1, max_length=200)


class OrgUpdate(StrictModel):
    name: str = Field(min_length=1, max_length=200)


class OrgOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    slug: str
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
