"""Request and response bodies of the GDPR routes."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

from taskloom.auth.schemas import StrictModel


class ErasureRequest(StrictModel):
    confirm: Literal["DELETE"] = Field(description='Type "DELETE" to confirm')
    password: str = Field(min_length=1, max_length=256)


class ErasureOut(BaseModel):
    erased: bool
    pseudonym: str = Field(description="How the audit trail refers to the erased account")
    deleted_organizations: list[uuid.UUID]
    rows: dict[str, int]
