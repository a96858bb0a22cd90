"""Bring a workflow's triggers and schedules back to a snapshot (triggers/snapshot.py), for the
restore of a version (workflows/restore.py): those no longer in it are deleted, those still
there are changed back, and those gone since are created again. Every change goes through the
triggers' own services, so it is checked, limited and audited as if made by hand, and needs
the same roles: a restore that would create, change or delete a webhook trigger needs an admin.

A re-created trigger gets a new id; a re-created webhook trigger a new secret (a snapshot holds
none), answered once like a creation's. An event trigger whose watched workflow is gone cannot
come back and is named in `skipped`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.config import Settings
from taskloom.crypto import CredentialCipher
from taskloom.triggers import schedules
from taskloom.triggers import service as triggers
from taskloom.triggers.models import WorkflowSchedule, WorkflowTrigger
from taskloom.triggers.schedule_schemas import ScheduleCreate, ScheduleUpdate
from taskloom.triggers.schemas import TriggerCreate, TriggerUpdate
from taskloom.triggers.snapshot import Snapshot, schedule_entry, trigger_entry
from taskloom.workflows.models import Workflow

_CREATE = TypeAdapter[Any](TriggerCreate)
_FIXED = ("id", "kind")  # what an update never changes


@dataclass
class Restored:
    # Webhook triggers created again, with their new secret: shown once, like a creation's.
    secrets: list[tuple[WorkflowTrigger, str]] = field(default_factory=list)
    # Snapshot entries that could not come back, and why.
    skipped: list[dict[str, str]] = field(default_factory=list)


def _changes(now: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in wanted.items() if k not in _FIXED and now.get(k) != v}


async def restore(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    settings: Settings,
    cipher: CredentialCipher,
    workflow_id: uuid.UUID,
    snapshot: Snapshot,
) -> Restored:
    """Make the workflow's triggers and schedules those of `snapshot` (deletions first, so the
    organization's limits count what remains)."""
    restored = Restored()
    await _triggers(db, principal, context, settings, cipher, workflow_id, snapshot, restored)
    await _schedules(db, principal, context, settings, workflow_id, snapshot)
    return restored


async def _triggers(
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    settings: Settings,
    cipher: CredentialCipher,
    workflow_id: uuid.UUID,
    snapshot: Snapshot,
    restored: Restored,
) -> None:
    rows = await db.execute(
        select(WorkflowTrigger).where(WorkflowTrigger.workflow_id == workflow_id)
    )
    current = {str(t.id): t for t in rows.scalars()}
    wanted = {entry["id"]: entry for entry in snapshot.triggers}
    for trigger_id, trigger in current.items():
        if trigger_id not in wanted:
            await triggers.delete_trigger(
                db=db, principal=principal, context=context, trigger_id=trigger.id
            )
    for trigger_id, entry in wanted.items():
        if trigger_id in current:
            changes = _changes(trigger_entry(current[trigger_id]), entry)
            if changes:
                await triggers.update_trigger(
                    db=db,
                    principal=principal,
                    context=context,
                    trigger_id=current[trigger_id].id,
                    body=TriggerUpdate.model_validate(changes),
                )
            continue
        body = _CREATE.validate_python({k: v for k, v in entry.items() if k != "id"})
        watched = entry.get("on", {}).get("workflow")
        if watched is not None and await db.get(Workflow, uuid.UUID(watched)) is None:
            restored.skipped.append(
                {"id": trigger_id, "kind": entry["kind"], "reason": "its watched workflow is gone"}
            )
            continue
        trigger, secret = await triggers.create_trigger(
            db=db,
            principal=principal,
            context=context,
            settings=settings,
            cipher=cipher,
            workflow_id=workflow_id,
            body=body,
        )
        if secret is not None:
            restored.secrets.append((trigger, secret))


async def _schedules(
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    settings: Settings,
    workflow_id: uuid.UUID,
    snapshot: Snapshot,
) -> None:
    rows = await db.execute(
        select(WorkflowSchedule).where(WorkflowSchedule.workflow_id == workflow_id)
    )
    current = {str(s.id): s for s in rows.scalars()}
    wanted = {entry["id"]: entry for entry in snapshot.schedules}
    for schedule_id, schedule in current.items():
        if schedule_id not in wanted:
            await schedules.delete_schedule(db=db, context=context, schedule_id=schedule.id)
    for schedule_id, entry in wanted.items():
        if schedule_id in current:
            changes = _changes(schedule_entry(current[schedule_id]), entry)
            if changes:
                await schedules.update_schedule(
                    db=db,
                    context=context,
                    schedule_id=current[schedule_id].id,
                    body=ScheduleUpdate.model_validate(changes),
                )
            continue
        await schedules.create_schedule(
            db=db,
            principal=principal,
            context=context,
            settings=settings,
            workflow_id=workflow_id,
            body=ScheduleCreate.model_validate({k: v for k, v in entry.items() if k != "id"}),
        )
