"""/api/workflows/{id}/triggers and /api/triggers: a workflow's webhook and event triggers.
Viewers read; members manage event triggers; webhook triggers (their secret starts the
workflow) are managed by admins, and the secret is in the answers to creation and rotation
only. The public endpoint the webhook triggers receive on is in hooks.py."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from taskloom.auth.access import access
from taskloom.auth.deps import Admin, Member, Viewer
from taskloom.config import Settings
from taskloom.locations import located, set_location
from taskloom.triggers import service
from taskloom.triggers.models import TriggerKind, WorkflowTrigger
from taskloom.triggers.schemas import (
    EventOnOut,
    RotateSecret,
    TriggerCreate,
    TriggerDeliveryOut,
    TriggerOut,
    TriggerUpdate,
    TriggerWithSecret,
)

router = APIRouter(prefix="/api", tags=["triggers"])


def _out(settings: Settings, trigger: WorkflowTrigger) -> TriggerOut:
    webhook = trigger.kind == TriggerKind.WEBHOOK
    on = None
    if trigger.kind == TriggerKind.EVENT and trigger.event_workflow_id is not None:
        on = EventOnOut(workflow=trigger.event_workflow_id, status=trigger.event_statuses or [])
    return TriggerOut(
        id=trigger.id,
        workflow_id=trigger.workflow_id,
        kind=trigger.kind,
        enabled=trigger.enabled,
        description=trigger.description,
        verification=trigger.verification,
        response=trigger.response,
        sync_timeout_seconds=trigger.sync_timeout_seconds,
        url=service.hook_url(settings, trigger.id) if webhook else None,
        previous_secret_expires_at=trigger.previous_secret_expires_at,
        on=on,
        created_by=trigger.created_by,
        created_at=trigger.created_at,
        updated_at=trigger.updated_at,
    )


def _with_secret(settings: Settings, trigger: WorkflowTrigger, secret: str) -> TriggerWithSecret:
    return TriggerWithSecret(**_out(settings, trigger).model_dump(), secret=secret)


@router.get("/workflows/{workflow_id}/triggers", openapi_extra=access("viewer"))
async def list_workflow_triggers(workflow_id: uuid.UUID, ctx: Viewer) -> list[TriggerOut]:
    triggers = await service.list_triggers(db=ctx.db, workflow_id=workflow_id)
    return [_out(ctx.runtime.settings, t) for t in triggers]


@router.post(
    "/workflows/{workflow_id}/triggers",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=access("member"),
    responses=located(201),
)
async def create_workflow_trigger(
    workflow_id: uuid.UUID, body: TriggerCreate, ctx: Member, response: Response
) -> TriggerWithSecret | TriggerOut:
    """A webhook trigger (admins; the answer holds its secret, shown this once) or an event
    trigger."""
    settings = ctx.runtime.settings
    trigger, secret = await service.create_trigger(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        settings=settings,
        cipher=ctx.runtime.cipher,
        workflow_id=workflow_id,
        body=body,
    )
    set_location(response, f"/api/triggers/{trigger.id}")
    if secret is None:
        return _out(settings, trigger)
    return _with_secret(settings, trigger, secret)


@router.get("/triggers/{trigger_id}", openapi_extra=access("viewer"))
async def get_trigger(trigger_id: uuid.UUID, ctx: Viewer) -> TriggerOut:
    return _out(ctx.runtime.settings, await service.get_trigger(db=ctx.db, trigger_id=trigger_id))


@router.patch("/triggers/{trigger_id}", openapi_extra=access("member"))
async def update_trigger(trigger_id: uuid.UUID, body: TriggerUpdate, ctx: Member) -> TriggerOut:
    """Event triggers: members; webhook triggers: admins."""
    trigger = await service.update_trigger(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, trigger_id=trigger_id, body=body
    )
    return _out(ctx.runtime.settings, trigger)


@router.delete(
    "/triggers/{trigger_id}", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=access("member")
)
async def delete_trigger(trigger_id: uuid.UUID, ctx: Member) -> Response:
    """Event triggers: members; webhook triggers: admins."""
    await service.delete_trigger(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, trigger_id=trigger_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/triggers/{trigger_id}/rotate-secret", openapi_extra=access("admin"))
async def rotate_trigger_secret(
    trigger_id: uuid.UUID, body: RotateSecret, ctx: Admin
) -> TriggerWithSecret:
    """A new secret (shown this once); the previous one verifies requests until
    `previous_secret_expires_at`."""
    trigger, secret = await service.rotate_secret(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        cipher=ctx.runtime.cipher,
        trigger_id=trigger_id,
        body=body,
    )
    return _with_secret(ctx.runtime.settings, trigger, secret)


@router.get("/triggers/{trigger_id}/deliveries", openapi_extra=access("viewer"))
async def list_trigger_deliveries(
    trigger_id: uuid.UUID,
    ctx: Viewer,
    limit: Annotated[int, Query(ge=1, le=service.MAX_DELIVERIES_SHOWN)] = 50,
) -> list[TriggerDeliveryOut]:
    """Newest first: accepted (with the execution started or found again) and rejected (with
    the reason; a rejected request's body is never kept)."""
    rows = await service.list_deliveries(db=ctx.db, trigger_id=trigger_id, limit=limit)
    return [TriggerDeliveryOut.model_validate(r, from_attributes=True) for r in rows]
