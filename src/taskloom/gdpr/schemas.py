"""Request and response bodies of the GDPR routes."""

from __future__ import annotations

import uuid
from datetime import datetime
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


class QueuedExportOut(BaseModel):
    request_id: uuid.UUID
    status: str
    download_url: str = Field(description="Works once, until expires_at, when status is ready")
    expires_at: datetime


class ExportStatusOut(BaseModel):
    request_id: uuid.UUID
    status: str = Field(description="queued, running, ready or failed")
    expires_at: datetime | None
    downloaded: bool
    bytes: int | None
