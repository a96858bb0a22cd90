"""A workflow's triggers and schedules as a version keeps them (workflows/versions.py): each one
as the body that would create it again, plus its id, so a restore (triggers/restore.py) can
change the ones still there and re-create the others. Never a secret: a webhook trigger
re-created by a restore gets a new one.

This module reads the models only (no service), so workflows/ can take a snapshot while
saving a workflow without importing the services that import workflows/."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.triggers.models import TriggerKind, WorkflowSchedule, WorkflowTrigger


@dataclass(frozen=True)
class Snapshot:
    triggers: list[dict[str, Any]]
    schedules: list[dict[str, Any]]


def trigger_entry(trigger: WorkflowTrigger) -> dict[str, Any]:
    """The trigger as a creation body (`WebhookTriggerCreate` or `EventTriggerCreate`, no
    secret) with its id."""
    entry: dict[str, Any] = {
        "id": str(trigger.id),
        "kind": trigger.kind,
        "enabled": trigger.enabled,
        "description": trigger.description,
    }
    if trigger.kind == TriggerKind.WEBHOOK:
        entry["verification"] = trigger.verification
        entry["response"] = trigger.response
        entry["sync_timeout_seconds"] = trigger.sync_timeout_seconds
    else:
        entry["on"] = {
            "workflow": str(trigger.event_workflow_id),
            "status": sorted(trigger.event_statuses or []),
        }
    return entry


def schedule_entry(schedule: WorkflowSchedule) -> dict[str, Any]:
    """The schedule as a creation body (`ScheduleCreate`) with its id."""
    return {
        "id": str(schedule.id),
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "input": schedule.input,
        "enabled": schedule.enabled,
        "overlap": schedule.overlap,
        "catch_up": schedule.catch_up,
    }


async def take(db: AsyncSession, workflow_id: UUID) -> Snapshot:
    """The workflow's triggers and schedules now, oldest first."""
    triggers = await db.execute(
        select(WorkflowTrigger)
        .where(WorkflowTrigger.workflow_id == workflow_id)
        .order_by(WorkflowTrigger.created_at, WorkflowTrigger.id)
    )
    schedules = await db.execute(
        select(WorkflowSchedule)
        .where(WorkflowSchedule.workflow_id == workflow_id)
        .order_by(WorkflowSchedule.created_at, WorkflowSchedule.id)
    )
    return Snapshot(
        triggers=[trigger_entry(t) for t in triggers.scalars()],
        schedules=[schedule_entry(s) for s in schedules.scalars()],
    )
