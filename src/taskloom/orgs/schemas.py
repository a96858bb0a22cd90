"""Request and response bodies of the organization and member routes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from taskloom.auth.schemas import Email, StrictModel
from taskloom.orgs.models import Role


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


class MemberAdd(StrictModel):
    email: Email
    role: Role = Role.MEMBER


class MemberUpdate(StrictModel):
    role: Role


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
    display_name: str
    role: Role
    joined_at: datetime
