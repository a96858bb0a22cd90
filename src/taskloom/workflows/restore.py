"""Restore a version: the workflow takes back that version's name, description and definition
(checked again, as a save would: a sub-workflow it names may be gone), its triggers and
schedules are brought back to that version's snapshot (triggers/restore.py), and the result is
stored as a new version, `restored_from` the old one. Audited as `workflow.restore`."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.config import Settings
from taskloom.crypto import CredentialCipher
from taskloom.errors import ValidationFailed
from taskloom.triggers import restore as trigger_restore
from taskloom.triggers.snapshot import Snapshot
from taskloom.workflows import versions
from taskloom.workflows.definition import validate_definition
from taskloom.workflows.models import WorkflowVersion
from taskloom.workflows.schemas import WorkflowDefinition
from taskloom.workflows.service import lock_workflow

_T = TypeVar("_T")


async def _still_valid(number: int, step: Awaitable[_T]) -> _T:
    """`step`, with a saved body that today's schemas refuse (they may have tightened since
    the version was saved) answered as a 422 naming the version, never a 500."""
    try:
        return await step
    except ValidationError as invalid:
        errors = [
            {"loc": [str(part) for part in e["loc"]], "message": e["msg"]} for e in invalid.errors()
        ]
        first = errors[0] if errors else {"loc": [], "message": "invalid"}
        raise ValidationFailed(
            f"version {number} can no longer be restored: "
            f"{'.'.join(first['loc']) or 'value'}: {first['message']}",
            code="version_not_restorable",
            details={"errors": errors},
        ) from None


async def restore_version(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    settings: Settings,
    cipher: CredentialCipher,
    workflow_id: uuid.UUID,
    number: int,
    message: str | None,
    if_match: str | None = None,
) -> tuple[WorkflowVersion, trigger_restore.Restored]:
    """The new version, equal to version `number`, and what the triggers' restore answered."""
    workflow = await lock_workflow(db=db, workflow_id=workflow_id)
    versions.check_if_match(if_match, workflow)
    source = await versions.get_version(db=db, workflow_id=workflow_id, number=number)
    definition = await _still_valid(number, _checked(db, principal, source.definition))
    restored = await _still_valid(
        number,
        trigger_restore.restore(
            db=db,
            principal=principal,
            context=context,
            settings=settings,
            cipher=cipher,
            workflow_id=workflow_id,
            snapshot=Snapshot(triggers=source.triggers, schedules=source.schedules),
        ),
    )
    workflow.name = source.name
    workflow.description = source.description
    workflow.definition = definition
    workflow.version += 1
    workflow.updated_by = principal.user_id
    await db.flush()
    await db.refresh(workflow)
    version = await versions.record(
        db=db,
        workflow=workflow,
        author=principal.user_id,
        message=message or f"Restored version {number}",
        restored_from=number,
    )
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.WORKFLOW_RESTORE,
        org_id=workflow.org_id,
        resource_type="workflow",
        resource_id=workflow.id,
        details={"version": workflow.version, "restored_from": number},
    )
    return version, restored


async def _checked(
    db: AsyncSession, principal: Principal, definition: dict[str, Any]
) -> dict[str, Any]:
    """The saved definition checked again as a save would check it, as stored."""
    return await validate_definition(
        WorkflowDefinition.model_validate(definition), db=db, org_id=principal.current_org()
    )
