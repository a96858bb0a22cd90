"""Bodies of the trigger endpoints (/api/workflows/{id}/triggers, /api/triggers) and of the
answers of `POST /hooks/{id}`. A webhook trigger's secret appears in exactly two answers:
creation and rotation."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from taskloom.auth.schemas import StrictModel
from taskloom.triggers.verification import Scheme

Response = Literal["async", "sync"]
EndStatus = Literal["succeeded", "failed", "cancelled"]
MAX_SYNC_TIMEOUT_SECONDS = 30


def _unique(statuses: list[str]) -> list[str]:
    return sorted(set(statuses))


def _unique_or_none(statuses: list[str] | None) -> list[str] | None:
    return None if statuses is None else _unique(statuses)


class EventOn(StrictModel):
    workflow: uuid.UUID = Field(description="A workflow of the same organization")
    status: list[EndStatus] = Field(
        default=["succeeded"],
        min_length=1,
        max_length=3,
        description="Which ends of that workflow's executions start this one",
    )

    _status = field_validator("status")(_unique)


class WebhookTriggerCreate(StrictModel):
    kind: Literal["webhook"]
    verification: Scheme = Field(description="How `POST /hooks/{id}` requests are verified")
    response: Response = Field(
        default="async",
        description="async: 202 at once; sync: wait for the execution's output (up to the timeout)",
    )
    sync_timeout_seconds: int = Field(default=10, ge=1, le=MAX_SYNC_TIMEOUT_SECONDS)
    enabled: bool = True
    description: str | None = Field(default=None, max_length=500)


class EventTriggerCreate(StrictModel):
    kind: Literal["event"]
    on: EventOn
    enabled: bool = True
    description: str | None = Field(default=None, max_length=500)


TriggerCreate = Annotated[WebhookTriggerCreate | EventTriggerCreate, Field(discriminator="kind")]


class EventOnUpdate(StrictModel):
    workflow: uuid.UUID | None = None
    status: list[EndStatus] | None = Field(default=None, min_length=1, max_length=3)

    _status = field_validator("status")(_unique_or_none)


class TriggerUpdate(StrictModel):
    """Fields left out stay as they are. The webhook fields apply to webhook triggers and `on`
    to event triggers only (422 otherwise); the kind never changes."""

    enabled: bool | None = None
    description: str | None = Field(default=None, max_length=500)
    verification: Scheme | None = None
    response: Response | None = None
    sync_timeout_seconds: int | None = Field(default=None, ge=1, le=MAX_SYNC_TIMEOUT_SECONDS)
    on: EventOnUpdate | None = None


class RotateSecret(StrictModel):
    # How long the old secret still verifies requests; max 7 days.
    overlap_seconds: int = Field(default=86_400, ge=0, le=7 * 86_400)


class EventOnOut(BaseModel):
    workflow: uuid.UUID
    status: list[str]


class TriggerOut(BaseModel):
    id: uuid.UUID
    workflow_id: uuid.UUID
    kind: str
    enabled: bool
    description: str | None
    # Webhook triggers (null for event triggers): the scheme, the answer, and where to send.
    verification: str | None
    response: str | None
    sync_timeout_seconds: int | None
    url: str | None = Field(description="Absolute when PUBLIC_URL is set, else a path")
    previous_secret_expires_at: datetime | None
    # Event triggers (null for webhook triggers).
    on: EventOnOut | None
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class TriggerWithSecret(TriggerOut):
    secret: str  # shown once: store it now


class TriggerDeliveryOut(BaseModel):
    id: uuid.UUID
    status: str
    reason: str | None
    delivery_id: str | None
    execution_id: uuid.UUID | None
    source_execution_id: uuid.UUID | None  # event triggers: the execution whose end this was
    created_at: datetime


class HookAccepted(BaseModel):
    """`POST /hooks/{id}` in async mode, or in sync mode when the wait timed out."""

    execution_id: uuid.UUID


class HookError(BaseModel):
    code: str


class HookResult(BaseModel):
    """`POST /hooks/{id}` in sync mode, the execution ended within the trigger's timeout:
    succeeded with its output, or failed / cancelled with its error's code only."""

    execution_id: uuid.UUID
    status: str
    output: Any = None
    error: HookError | None = None
