"""Bodies of /api/webhooks. A secret appears in exactly two responses: creation and rotation."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

EventType = Literal[
    "execution.succeeded",
    "execution.failed",
    "execution.cancelled",
    "approval.requested",  # a link to the approval's page (it identifies, never authorizes)
    "workflow.created",
    "workflow.updated",
    "workflow.deleted",
    "budget.threshold",  # 50, 80, 100 % of an organization's or a workflow's monthly AI budget
    "ping",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unique(events: list[str]) -> list[str]:
    return sorted(set(events))


def _unique_or_none(events: list[str] | None) -> list[str] | None:
    return None if events is None else _unique(events)


class WebhookCreate(StrictModel):
    url: str = Field(min_length=1, max_length=2048)
    events: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))
    description: str | None = Field(default=None, max_length=500)
    enabled: bool = True

    _events = field_validator("events")(_unique)


class WebhookUpdate(StrictModel):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[EventType] | None = Field(default=None, min_length=1)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None  # true again also clears the failure count

    _events = field_validator("events")(_unique_or_none)


class RotateSecret(StrictModel):
    # How long the old secret still signs deliveries (a second v1= signature); max 7 days.
    overlap_seconds: int = Field(default=86_400, ge=0, le=7 * 86_400)


class WebhookOut(BaseModel):
    id: uuid.UUID
    url: str
    description: str | None
    events: list[str]
    enabled: bool
    consecutive_failures: int
    disabled_reason: str | None
    previous_secret_expires_at: datetime | None
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookOut):
    secret: str  # shown once: store it now


class DeliveryOut(BaseModel):
    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    attempt: int
    status: str
    response_code: int | None
    duration_ms: int | None
    error: str | None
    request_id: str | None
    created_at: datetime


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class PingAccepted(BaseModel):
    event_id: uuid.UUID
    delivery_id: uuid.UUID
