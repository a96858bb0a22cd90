"""Workflows (definitions), as the API sees them. Every query runs in the
caller's tenant transaction, so another organization's rows are simply not there (404).
Creating or replacing one stores a version (workflows/versions.py); enabling or disabling it
does not."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.db.driver import Statements
from taskloom.db.tenancy import tenant_arguments
from taskloom.errors import Conflict, NotFound
from taskloom.executions.templating import secret_references
from taskloom.secrets import service as secrets
from taskloom.workflows import versions
from taskloom.workflows.definition import validate_definition
from taskloom.workflows.models import Workflow
from taskloom.workflows.schemas import WorkflowCreate, WorkflowOut, WorkflowUpdate, WorkflowWarning


async def _audit(
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    action: AuditAction,
    resource_type: str,
    resource_id: uuid.UUID,
    details: dict[str, Any] | None = None,
) -> None:
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=principal.current_org(),
        resource_type=resource_type,
        resource_id=resource_id,
        details=details,
    )


# The columns a workflow shows in a list (WorkflowOut), read on the asyncpg connection
# (db/driver.py): the API's list endpoint is one of its hottest reads.
# The organization's workflows by name, the tenant set by the function itself (migration 0024).
_LIST = "select * from taskloom_workflows($1, $2, $3)"


async def list_workflows(*, reads: Statements, principal: Principal) -> list[WorkflowOut]:
    """The organization's workflows by name. `reads` is any application-role connection: in
    autocommit (auth/deps.ReadContext.calls: one round trip) or a session's
    (db/driver.session_connection)."""
    tenant = tenant_arguments(principal.current_org(), principal.user_id)
    return [WorkflowOut(**row) for row in await reads.fetch(_LIST, *tenant)]


async def get_workflow(*, db: AsyncSession, workflow_id: uuid.UUID) -> Workflow:
    """The workflow, or NotFound (also when it belongs to another organization)."""
    workflow = await db.get(Workflow, workflow_id)
    if workflow is None:
        raise NotFound("workflow not found")
    return workflow


async def lock_workflow(*, db: AsyncSession, workflow_id: uuid.UUID) -> Workflow:
    """The workflow, locked until the commit and read afresh (a change committed meanwhile is
    seen), or NotFound: two saves of one workflow take their version numbers one after the
    other."""
    workflow = await db.scalar(
        select(Workflow)
        .where(Workflow.id == workflow_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if workflow is None:
        raise NotFound("workflow not found")
    return workflow


async def _check_key_free(db: AsyncSession, key: str | None, own: uuid.UUID | None) -> None:
    """Conflict when another workflow of the organization has `key` (the partial unique index
    is the fence for two saves racing; this gives the usual case a clear 409)."""
    if key is None:
        return
    taken = await db.scalar(select(Workflow.id).where(Workflow.key == key, Workflow.id != own))
    if taken is not None:
        raise Conflict(f"another workflow already has the key {key!r}", code="key_taken")


async def _flush_keyed(db: AsyncSession, key: str | None) -> None:
    """Flush; when the save sets a key, in a savepoint, so that losing a race for the key to
    another save (the unique index) is the same 409 as the check before it."""
    if key is None:
        await db.flush()
        return
    try:
        async with db.begin_nested():
            await db.flush()
    except IntegrityError:
        raise Conflict(f"another workflow already has the key {key!r}", code="key_taken") from None


async def create_workflow(
    *, db: AsyncSession, principal: Principal, context: AuditContext, body: WorkflowCreate
) -> Workflow:
    """The new workflow, at version 1 (stored with the body's `message`)."""
    await _check_key_free(db, body.key, None)
    workflow = Workflow(
        org_id=principal.current_org(),
        key=body.key,
        name=body.name,
        description=body.description,
        definition=await validate_definition(
            body.definition, db=db, org_id=principal.current_org()
        ),
        enabled=body.enabled,
        created_by=principal.user_id,
        updated_by=principal.user_id,
    )
    db.add(workflow)
    await _flush_keyed(db, body.key)
    await versions.record(
        db=db,
        workflow=workflow,
        author=principal.user_id,
        message=body.message,
        snapshot=versions.NOTHING,
    )
    await _audit(db, principal, context, AuditAction.WORKFLOW_CREATE, "workflow", workflow.id)
    return workflow


async def update_workflow(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    workflow_id: uuid.UUID,
    body: WorkflowUpdate,
    if_match: str | None = None,
) -> Workflow:
    """Replace name, description and definition; the version goes up by one and is stored
    with the workflow's triggers and schedules as they are. With `if_match` (the `If-Match`
    header), only while the workflow is still at that version (else 412). Executions already
    accepted keep running the definition they were accepted with."""
    workflow = await lock_workflow(db=db, workflow_id=workflow_id)
    versions.check_if_match(if_match, workflow)
    new_key = body.key if body.key is not None and body.key != workflow.key else None
    if new_key is not None:
        await _check_key_free(db, new_key, workflow.id)
        workflow.key = new_key
    workflow.name = body.name
    workflow.description = body.description
    workflow.definition = await validate_definition(
        body.definition, db=db, org_id=principal.current_org()
    )
    workflow.version += 1
    if body.enabled is not None:
        workflow.enabled = body.enabled
    workflow.updated_by = principal.user_id
    await _flush_keyed(db, new_key)
    await db.refresh(workflow)
    await versions.record(db=db, workflow=workflow, author=principal.user_id, message=body.message)
    await _audit(
        db,
        principal,
        context,
        AuditAction.WORKFLOW_UPDATE,
        "workflow",
        workflow.id,
        {"version": workflow.version},
    )
    return workflow


async def set_enabled(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    workflow_id: uuid.UUID,
    enabled: bool,
) -> Workflow:
    """Enable or disable the workflow (its definition and version are unchanged). Disabled, it
    starts from no schedule or trigger and a manual start answers 409; executions already
    accepted run on."""
    workflow = await get_workflow(db=db, workflow_id=workflow_id)
    if workflow.enabled != enabled:
        workflow.enabled = enabled
        workflow.updated_by = principal.user_id
        await db.flush()
        await db.refresh(workflow)
        await _audit(
            db,
            principal,
            context,
            AuditAction.WORKFLOW_UPDATE,
            "workflow",
            workflow.id,
            {"enabled": enabled},
        )
    return workflow


async def delete_workflow(
    *, db: AsyncSession, principal: Principal, context: AuditContext, workflow_id: uuid.UUID
) -> None:
    """Delete the workflow and its executions; a job still queued finds nothing and ends."""
    workflow = await get_workflow(db=db, workflow_id=workflow_id)
    await db.delete(workflow)
    await db.flush()
    await _audit(
        db,
        principal,
        context,
        AuditAction.WORKFLOW_DELETE,
        "workflow",
        workflow_id,
        {"name": workflow.name},
    )


async def warnings(
    *, db: AsyncSession, org_id: uuid.UUID, definition: dict[str, Any]
) -> list[WorkflowWarning]:
    """What a saved definition may trip on when it runs: secrets it reads that the organization
    does not have (saving is allowed: they may be created later; the step fails with
    `secret_not_found` until then)."""
    names = secret_references(definition)
    if not names:
        return []
    unknown = sorted(names - await secrets.known_names(db=db, org_id=org_id, names=names))
    if not unknown:
        return []
    return [
        WorkflowWarning(
            code="unknown_secrets",
            message="the definition reads secrets the organization does not have: "
            + ", ".join(unknown),
            names=unknown,
        )
    ]
