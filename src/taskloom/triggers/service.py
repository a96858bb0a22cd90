"""Webhook and event triggers of a workflow: create (a webhook trigger's secret is made here and
shown once), change, rotate the secret with an overlap, delete, list their deliveries, and
record a delivery (each trigger keeps the newest MAX_DELIVERIES_KEPT of each outcome).

Webhook triggers and their secrets are for admins; members manage event triggers. Every query
runs in the caller's tenant transaction, so another organization's triggers are not there (404).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import uuid
from typing import Any

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.config import Settings
from taskloom.crypto import CredentialCipher, live_secrets, rotate_sealed_secret, seal_secret
from taskloom.errors import Conflict, Forbidden, NotFound, ValidationFailed
from taskloom.orgs.models import Role
from taskloom.triggers.models import DeliveryStatus, TriggerDelivery, TriggerKind, WorkflowTrigger
from taskloom.triggers.schemas import (
    EventTriggerCreate,
    RotateSecret,
    TriggerUpdate,
    WebhookTriggerCreate,
)
from taskloom.triggers.verification import SECRET_PREFIX, Scheme, new_secret
from taskloom.workflows.models import Workflow
from taskloom.workflows.service import get_workflow

MAX_DELIVERIES_KEPT = 1_000  # per trigger and outcome (accepted, rejected)
ACCEPTED_PRUNE_EVERY = 16
_accepted_writes = itertools.count(1)
MAX_DELIVERIES_SHOWN = 200


def bound_to(trigger_id: uuid.UUID, org_id: uuid.UUID) -> str:
    return f"workflow_triggers:{org_id}:{trigger_id}"


def hook_url(settings: Settings, trigger_id: uuid.UUID) -> str:
    """Where senders post: absolute under PUBLIC_URL when it is set, else a path."""
    base = settings.public_url.rstrip("/") if settings.public_url else ""
    return f"{base}/hooks/{trigger_id}"


def _invalid(where: list[str], message: str) -> ValidationFailed:
    return ValidationFailed(
        f"{'.'.join(where)}: {message}", details={"errors": [{"loc": where, "message": message}]}
    )


def _require_admin_for(principal: Principal, kind: str) -> None:
    """Webhook triggers hold a secret that lets anyone start the workflow: admins only."""
    if kind == TriggerKind.WEBHOOK and not principal.has_role(Role.ADMIN):
        raise Forbidden("webhook triggers and their secrets need the admin role or higher")


async def _audit(
    db: AsyncSession,
    context: AuditContext,
    action: AuditAction,
    trigger: WorkflowTrigger,
    details: dict[str, Any],
) -> None:
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=trigger.org_id,
        resource_type="trigger",
        resource_id=trigger.id,
        details={"kind": trigger.kind, "workflow_id": str(trigger.workflow_id), **details},
    )


def verifying_secrets(cipher: CredentialCipher, trigger: WorkflowTrigger) -> list[str]:
    """The secrets a request may be signed with now: the current one, and the previous one
    while its overlap lasts (none for an event trigger)."""
    return live_secrets(cipher, trigger, bound_to=bound_to(trigger.id, trigger.org_id))


async def list_triggers(*, db: AsyncSession, workflow_id: uuid.UUID) -> list[WorkflowTrigger]:
    """The workflow's triggers, oldest first; NotFound when the workflow is not there."""
    await get_workflow(db=db, workflow_id=workflow_id)
    rows = await db.execute(
        select(WorkflowTrigger)
        .where(WorkflowTrigger.workflow_id == workflow_id)
        .order_by(WorkflowTrigger.created_at, WorkflowTrigger.id)
    )
    return list(rows.scalars())


async def get_trigger(*, db: AsyncSession, trigger_id: uuid.UUID) -> WorkflowTrigger:
    """The trigger, or NotFound (also when it belongs to another organization)."""
    trigger = await db.get(WorkflowTrigger, trigger_id)
    if trigger is None:
        raise NotFound("trigger not found")
    return trigger


async def _check_allowance(db: AsyncSession, org_id: uuid.UUID, limit: int) -> None:
    """Refuse a new trigger past MAX_TRIGGERS_PER_ORG. The transaction lock makes two
    concurrent creations count one after the other."""
    await db.execute(
        text("select pg_advisory_xact_lock(hashtextextended('taskloom.triggers:' || :o, 0))"),
        {"o": str(org_id)},
    )
    count = await db.scalar(
        select(func.count()).select_from(WorkflowTrigger).where(WorkflowTrigger.org_id == org_id)
    )
    if (count or 0) >= limit:
        raise Conflict(
            f"this organization already has {count} triggers, the most allowed "
            "(MAX_TRIGGERS_PER_ORG); delete one first",
            code="trigger_limit",
        )


async def _watched_workflow(db: AsyncSession, workflow_id: uuid.UUID) -> uuid.UUID:
    """An event trigger's `on.workflow`: a workflow of the caller's organization (RLS hides
    the others, so another organization's id reads as missing)."""
    if await db.get(Workflow, workflow_id) is None:
        raise _invalid(["body", "on", "workflow"], "no such workflow in this organization")
    return workflow_id


async def create_trigger(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    settings: Settings,
    cipher: CredentialCipher,
    workflow_id: uuid.UUID,
    body: WebhookTriggerCreate | EventTriggerCreate,
) -> tuple[WorkflowTrigger, str | None]:
    """The new trigger, and a webhook trigger's secret (returned this once, stored only
    encrypted; None for an event trigger)."""
    _require_admin_for(principal, body.kind)
    workflow = await get_workflow(db=db, workflow_id=workflow_id)
    trigger = WorkflowTrigger(
        id=uuid.uuid4(),
        org_id=workflow.org_id,
        workflow_id=workflow.id,
        kind=body.kind,
        enabled=body.enabled,
        description=body.description,
        created_by=principal.user_id,
    )
    secret = None
    if isinstance(body, WebhookTriggerCreate):
        trigger.verification = body.verification
        trigger.response = body.response
        trigger.sync_timeout_seconds = body.sync_timeout_seconds
        secret = _chosen_secret(body.verification, body.secret)
        seal_secret(cipher, trigger, secret, bound_to=bound_to(trigger.id, trigger.org_id))
        details: dict[str, Any] = {
            "verification": body.verification,
            "secret_source": "sender" if body.secret else "generated",
        }
    else:
        trigger.event_workflow_id = await _watched_workflow(db, body.on.workflow)
        trigger.event_statuses = list(body.on.status)
        details = {"on": {"workflow": str(body.on.workflow), "status": body.on.status}}
    await _check_allowance(db, workflow.org_id, settings.max_triggers_per_org)
    db.add(trigger)
    await db.flush()
    await db.refresh(trigger)
    await _audit(db, context, AuditAction.TRIGGER_CREATE, trigger, details)
    return trigger, secret


def _chosen_secret(scheme: Scheme, provided: str | None) -> str:
    """The sender's own secret when given (checked to be usable by the scheme), else a new one.
    Stripe, Slack and Svix make their senders' secrets; GitHub and the others take ours."""
    if provided is None:
        return new_secret()
    if scheme == Scheme.STANDARD and not _standard_secret(provided):
        raise _invalid(
            ["body", "secret"], "a Standard Webhooks secret is whsec_ and base64 of 24+ bytes"
        )
    return provided


def _standard_secret(secret: str) -> bool:
    if not secret.startswith(SECRET_PREFIX):
        return False
    try:
        return len(base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)) >= 24
    except (binascii.Error, ValueError):
        return False


def _apply_webhook_fields(trigger: WorkflowTrigger, body: TriggerUpdate) -> None:
    if body.on is not None:
        raise _invalid(["body", "on"], "applies to event triggers only")
    if body.verification is not None:
        trigger.verification = body.verification
    if body.response is not None:
        trigger.response = body.response
    if body.sync_timeout_seconds is not None:
        trigger.sync_timeout_seconds = body.sync_timeout_seconds


async def _apply_event_fields(
    db: AsyncSession, trigger: WorkflowTrigger, body: TriggerUpdate
) -> None:
    for name in ("verification", "response", "sync_timeout_seconds"):
        if getattr(body, name) is not None:
            raise _invalid(["body", name], "applies to webhook triggers only")
    if body.on is None:
        return
    if body.on.workflow is not None:
        trigger.event_workflow_id = await _watched_workflow(db, body.on.workflow)
    if body.on.status is not None:
        trigger.event_statuses = list(body.on.status)


async def update_trigger(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    trigger_id: uuid.UUID,
    body: TriggerUpdate,
) -> WorkflowTrigger:
    trigger = await get_trigger(db=db, trigger_id=trigger_id)
    _require_admin_for(principal, trigger.kind)
    if trigger.kind == TriggerKind.WEBHOOK:
        _apply_webhook_fields(trigger, body)
    else:
        await _apply_event_fields(db, trigger, body)
    if body.enabled is not None:
        trigger.enabled = body.enabled
    if "description" in body.model_fields_set:
        trigger.description = body.description
    await db.flush()
    await db.refresh(trigger)
    fields = sorted(body.model_fields_set)
    await _audit(db, context, AuditAction.TRIGGER_UPDATE, trigger, {"fields": fields})
    return trigger


async def rotate_secret(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    cipher: CredentialCipher,
    trigger_id: uuid.UUID,
    body: RotateSecret,
) -> tuple[WorkflowTrigger, str]:
    """A new secret; the old one keeps verifying requests for the overlap."""
    trigger = await get_trigger(db=db, trigger_id=trigger_id)
    _require_admin_for(principal, trigger.kind)
    if trigger.kind != TriggerKind.WEBHOOK:
        raise Conflict("event triggers have no secret", code="trigger_has_no_secret")
    secret = _chosen_secret(Scheme(str(trigger.verification)), body.secret)
    rotate_sealed_secret(
        cipher,
        trigger,
        secret,
        bound_to=bound_to(trigger.id, trigger.org_id),
        overlap_seconds=body.overlap_seconds,
    )
    await db.flush()
    await db.refresh(trigger)
    await _audit(
        db,
        context,
        AuditAction.TRIGGER_ROTATE_SECRET,
        trigger,
        {
            "overlap_seconds": body.overlap_seconds,
            "secret_source": "sender" if body.secret else "generated",
        },
    )
    return trigger, secret


async def delete_trigger(
    *, db: AsyncSession, principal: Principal, context: AuditContext, trigger_id: uuid.UUID
) -> None:
    """The trigger and its deliveries (executions it started stay)."""
    trigger = await get_trigger(db=db, trigger_id=trigger_id)
    _require_admin_for(principal, trigger.kind)
    await _audit(db, context, AuditAction.TRIGGER_DELETE, trigger, {})
    await db.delete(trigger)
    await db.flush()


async def list_deliveries(
    *, db: AsyncSession, trigger_id: uuid.UUID, limit: int
) -> list[TriggerDelivery]:
    """The trigger's newest deliveries first, accepted and rejected alike."""
    await get_trigger(db=db, trigger_id=trigger_id)
    rows = await db.execute(
        select(TriggerDelivery)
        .where(TriggerDelivery.trigger_id == trigger_id)
        .order_by(TriggerDelivery.created_at.desc(), TriggerDelivery.id.desc())
        .limit(max(1, min(limit, MAX_DELIVERIES_SHOWN)))
    )
    return list(rows.scalars())


async def record_delivery(
    *,
    db: AsyncSession,
    org_id: uuid.UUID,
    trigger_id: uuid.UUID,
    status: DeliveryStatus,
    reason: str | None = None,
    delivery_id: str | None = None,
    execution_id: uuid.UUID | None = None,
) -> None:
    """Write one delivery of the trigger (never a request's body) and drop those of the same
    outcome beyond the newest MAX_DELIVERIES_KEPT, so a flood of forged requests cannot grow
    the table: after every rejected delivery, and after one accepted delivery in
    ACCEPTED_PRUNE_EVERY of this process (accepted ones are the hot path, and their number only
    grows as fast as executions are accepted). The cut is by time: the (MAX_DELIVERIES_KEPT +
    1)-th newest and every row as old go, so rows written in the same instant as it may keep
    fewer."""
    await db.execute(
        insert(TriggerDelivery).values(
            org_id=org_id,
            trigger_id=trigger_id,
            status=status,
            reason=reason,
            delivery_id=delivery_id,
            execution_id=execution_id,
        )
    )
    outcome = (TriggerDelivery.trigger_id == trigger_id, TriggerDelivery.status == status)
    if status == DeliveryStatus.ACCEPTED and next(_accepted_writes) % ACCEPTED_PRUNE_EVERY:
        return
    # An index-only walk of (trigger_id, status, created_at): about MAX_DELIVERIES_KEPT entries.
    cut = (
        select(TriggerDelivery.created_at)
        .where(*outcome)
        .order_by(TriggerDelivery.created_at.desc())
        .offset(MAX_DELIVERIES_KEPT)
        .limit(1)
        .scalar_subquery()
    )
    # SKIP LOCKED: concurrent deliveries of one trigger each drop the old rows nobody else is
    # dropping, instead of queueing behind each other's deletes.
    old = (
        select(TriggerDelivery.id)
        .where(*outcome, TriggerDelivery.created_at <= cut)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    await db.execute(
        delete(TriggerDelivery)
        .where(TriggerDelivery.id.in_(old))
        .execution_options(synchronize_session=False)
    )
