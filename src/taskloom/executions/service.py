"""Executions (runs of a workflow), as the API sees them. Every query runs in the caller's
tenant transaction, so another organization's rows are simply not there (404)."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom import safe_jsonschema
from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.db.driver import Statements, app_connection, session_connection
from taskloom.db.engine import Database
from taskloom.db.tenancy import tenant_arguments
from taskloom.errors import (
    Conflict,
    NotFound,
    TooManyQueued,
    ValidationFailed,
    unavailable_dependency,
)
from taskloom.executions import agent_turns, state
from taskloom.executions.models import (
    AgentTurn,
    ApprovalStatus,
    ExecutionApproval,
    ExecutionStatus,
    ExecutionStep,
    ExecutionStepItem,
    IdempotencyKey,
    StepStatus,
    WorkflowExecution,
)
from taskloom.executions.schemas import ExecutionOut
from taskloom.executions.state import TERMINAL
from taskloom.pagination import decode_cursor, encode_cursor
from taskloom.workflows.models import Workflow
from taskloom.workflows.service import get_workflow

MAX_PAGE = 200
QUEUE_FULL_RETRY_AFTER_SECONDS = 5


async def _audit(
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    action: AuditAction,
    resource_type: str,
    resource_id: uuid.UUID,
) -> None:
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=principal.current_org(),
        resource_type=resource_type,
        resource_id=resource_id,
    )


def queued_count(org_id: uuid.UUID, max_queued: int) -> Any:
    """How many executions the organization has queued, counted up to `max_queued` only (a
    flooded organization costs at most that many index entries of `(org_id, status)`)."""
    waiting = (
        select(WorkflowExecution.id)
        .where(
            WorkflowExecution.org_id == org_id, WorkflowExecution.status == ExecutionStatus.QUEUED
        )
        .limit(max_queued)
        .subquery()
    )
    return select(func.count()).select_from(waiting).scalar_subquery()


def check_queue_room(queued: int | None, max_queued: int) -> None:
    """TooManyQueued (429) when the organization already has `max_queued` executions queued.
    Requests racing at the limit may each pass: it may be exceeded by the number of that
    organization's calls in flight, never more."""
    if (queued or 0) >= max_queued:
        raise TooManyQueued(
            f"the organization already has {max_queued} executions queued; retry later",
            retry_after=QUEUE_FULL_RETRY_AFTER_SECONDS,
        )


class StartKind(StrEnum):
    """What started an execution (`workflow_executions.trigger_kind`)."""

    API = "api"
    SCHEDULE = "schedule"
    WEBHOOK = "webhook"
    EVENT = "event"
    RETRY = "retry"  # a re-run of a finished execution (executions/reruns.py)


@dataclass(frozen=True)
class Origin:
    """Who or what starts an execution: a person or key through the API (`user_id`), or a
    trigger (its kind and id, and for an event trigger how deep its chain already is)."""

    kind: StartKind = StartKind.API
    trigger_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    depth: int = 0
    request_id: str | None = None
    # An event-started execution counts towards the executions its chain's first start caused
    # (MAX_DESCENDANT_EXECUTIONS, as sub-workflows do).
    root_execution_id: uuid.UUID | None = None


def api_origin(principal: Principal, context: AuditContext) -> Origin:
    """A start by a person or an API key, through the API or the web UI."""
    return Origin(user_id=principal.user_id, request_id=context.request_id)


@dataclass(frozen=True)
class Started:
    """The execution a start answers with; `created` is False when an idempotency key found
    an earlier one (nothing to submit then: it was submitted when it was created)."""

    execution: WorkflowExecution
    created: bool = True
    # Its definition is inline (executions/inline.py): its job may carry its input.
    inline: bool = False


IDEMPOTENCY_KEY_MAX = 255


def input_digest(input: Any) -> str:
    """SHA-256 of the input's canonical JSON: what an idempotency key is bound to."""
    canonical = json.dumps(input, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_input(definition: dict[str, Any], input: Any) -> None:
    """ValidationFailed listing every path where `input` breaks the definition's
    `input_schema` (nothing when it declares none)."""
    schema = definition.get("input_schema")
    if schema is None:
        return
    try:
        errors = safe_jsonschema.all_errors(schema, input)
    except (safe_jsonschema.PatternTooSlow, safe_jsonschema.SchemaTooSlowToCheck) as slow:
        raise ValidationFailed(
            f"the input cannot be checked against the workflow's input_schema: {slow}",
            code="input_invalid",
        ) from None
    if errors:
        listed = [
            {"loc": ["input", *[str(p) for p in error.absolute_path]], "message": error.message}
            for error in errors
        ]
        raise ValidationFailed(
            "the input does not match the workflow's input_schema: "
            + "; ".join(f"{'.'.join(e['loc'])}: {e['message']}" for e in listed[:5]),
            code="input_invalid",
            details={"errors": listed},
        )


async def _claim_key(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    workflow_id: uuid.UUID,
    key: str,
    digest: str,
    ttl_seconds: int,
) -> uuid.UUID | WorkflowExecution:
    """Take the idempotency key for a new execution (its id, to create it with), or find the
    execution an earlier start with the same key and input made. A concurrent start with the
    key waits here for the other's commit (the unique index), then finds its execution; a key
    older than the TTL is taken over."""
    for _ in range(3):  # the earlier execution may be deleted between the two statements
        execution_id = uuid.uuid4()
        taken = await db.execute(
            insert(IdempotencyKey)
            .values(
                org_id=org_id,
                workflow_id=workflow_id,
                key=key,
                request_hash=digest,
                execution_id=execution_id,
            )
            .on_conflict_do_update(
                index_elements=[IdempotencyKey.workflow_id, IdempotencyKey.key],
                set_={
                    "request_hash": digest,
                    "execution_id": execution_id,
                    "created_at": func.now(),
                },
                where=IdempotencyKey.created_at < func.now() - timedelta(seconds=ttl_seconds),
            )
            .returning(IdempotencyKey.id)
        )
        if taken.first() is not None:
            return execution_id
        row = (
            await db.execute(
                select(IdempotencyKey.request_hash, WorkflowExecution)
                .join(WorkflowExecution, WorkflowExecution.id == IdempotencyKey.execution_id)
                .where(IdempotencyKey.workflow_id == workflow_id, IdempotencyKey.key == key)
            )
        ).first()
        if row is None:
            continue
        if row.request_hash != digest:
            raise ValidationFailed(
                "this Idempotency-Key was used with a different input in the last "
                f"{ttl_seconds // 3600} h; use a new key",
                code="idempotency_key_reused",
            )
        found: WorkflowExecution = row.WorkflowExecution
        return found
    raise Conflict("the idempotency key is being taken over; retry", code="idempotency_conflict")


# The workflow, the organization's queued count (up to the limit) and, when nothing refuses
# the start (disabled, an input_schema to check first, a full queue), the execution itself: one
# call of `taskloom_start` (migration 0017) for the usual start, a second with the version whose
# input_schema the input was checked against.
_START = "select taskloom_start($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
_START_MANY = "select taskloom_start_many($1)"


@dataclass(frozen=True)
class Start:
    """One start without an idempotency key: what `start_execution` is given, and the id its
    execution will have (known before, so its job's data can be made in the caller's context)."""

    workflow_id: uuid.UUID
    input: dict[str, Any]
    max_queued: int | None
    origin: Origin
    execution_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def arguments(self, tenant: uuid.UUID | None, version: int | None) -> list[Any]:
        """`taskloom_start`'s arguments (the input as JSON text); `version` given: the second
        call, after the check."""
        arguments = self.values(tenant, version)
        arguments[7] = json.dumps(arguments[7])
        return arguments

    def values(self, tenant: uuid.UUID | None, version: int | None) -> list[Any]:
        origin = self.origin
        return [
            tenant,
            origin.user_id,
            origin.request_id,
            self.workflow_id,
            self.execution_id,
            self.max_queued if version is None else None,
            version,
            self.input,
            str(origin.kind),
            origin.trigger_id,
            origin.depth,
            origin.root_execution_id,
        ]


async def start_execution(
    *,
    db: AsyncSession,
    org_id: uuid.UUID,
    workflow_id: uuid.UUID,
    input: dict[str, Any],
    max_queued: int | None,
    origin: Origin,
    idempotency_key: str | None = None,
    idempotency_ttl_seconds: int = 86_400,
    idempotency_digest: str | None = None,
) -> Started:
    """A queued execution of the workflow's current definition, in the caller's tenant
    transaction. Refused when the workflow is disabled (Conflict), the input breaks its
    `input_schema` (ValidationFailed), or the organization has `max_queued` waiting
    (TooManyQueued; None: the caller knows it is far below, see `executions.queue.queue_limit`).
    With an idempotency key, an earlier start with the same key and input answers instead
    (`created` False); `idempotency_digest` binds the key to something else than the whole
    input (a webhook delivery: its body and query, as a sender's retry re-stamps its headers).
    The caller submits a created execution to the queue after the commit (a job must never run
    ahead of its row). The usual start is one call on the session's connection (the hot path:
    no ORM unit of work); the execution returned is not in the session."""
    if idempotency_key is not None:
        return await _start_with_key(
            db=db,
            org_id=org_id,
            workflow_id=workflow_id,
            input=input,
            max_queued=max_queued,
            origin=origin,
            key=idempotency_key,
            ttl_seconds=idempotency_ttl_seconds,
            digest=idempotency_digest or input_digest(input),
        )
    start = Start(workflow_id=workflow_id, input=input, max_queued=max_queued, origin=origin)
    return await _start(await session_connection(db), None, start)


async def start_executions_alone(
    database: Database, starts: list[tuple[uuid.UUID, Start]]
) -> list[Started | Exception]:
    """Several `start_execution`s, each of an (organization, start), in one transaction of their
    own: each start sets its tenant (the organization, `origin.user_id`, `origin.request_id`)
    for its own statements, and all commit when the call returns (the execute route's lane:
    one round trip for the starts that arrived together). Each answer is its start's
    execution or what refused it. Should the call fail as a whole, each start is made alone,
    so one start's error is only its own."""
    async with app_connection(database) as statements:
        try:
            found: list[Any] | None = await statements.fetchval(
                _START_MANY,
                json.dumps([start.values(tenant, None) for tenant, start in starts], default=str),
            )
        except DBAPIError as failed:
            if unavailable_dependency(failed):
                raise
            found = None
        answers: list[Started | Exception] = []
        for i, (tenant, start) in enumerate(starts):
            try:
                if found is None:
                    answers.append(await _start(statements, tenant, start))
                else:
                    answers.append(await _conclude(statements, tenant, start, found[i]))
            except Exception as refused:  # this start's answer, whatever it is
                answers.append(refused)
        return answers


async def _start(statements: Statements, tenant: uuid.UUID | None, start: Start) -> Started:
    found = await statements.fetchval(_START, *start.arguments(tenant, None))
    return await _conclude(statements, tenant, start, found)


async def _conclude(
    statements: Statements, tenant: uuid.UUID | None, start: Start, found: Any
) -> Started:
    """The start's execution from `taskloom_start`'s answer, or why it was refused; a start
    refused only for its input to be checked is made after the check."""
    if found is None:
        raise NotFound("workflow not found")
    if not found["enabled"]:
        raise Conflict("the workflow is disabled; enable it to start it", code="workflow_disabled")
    created_at, inline = found["created_at"], bool(found.get("inline"))
    if created_at is None:  # refused by the call: say why, or insert after the check
        if found["input_schema"] is not None:
            check_input({"input_schema": found["input_schema"]}, start.input)
        if start.max_queued is not None:
            check_queue_room(found["queued"], start.max_queued)
        again = await statements.fetchval(_START, *start.arguments(tenant, found["version"]))
        created_at = again["created_at"] if again is not None else None
        inline = again is not None and bool(again.get("inline"))
        if created_at is None:  # its definition changed since the check: check it again
            raise Conflict("the workflow changed while starting; retry", code="workflow_changed")
    execution = queued_execution(
        start.execution_id,
        uuid.UUID(found["org_id"]),
        start.workflow_id,
        found["version"],
        start.input,
        start.origin,
    )
    execution.created_at = datetime.fromtimestamp(created_at, UTC)
    # Not audited: the execution row is its own record (who or what, when, request id), and an
    # audit row per run would serialize every execution of an organization on its chain's lock.
    return Started(execution, inline=inline)


def queued_execution(
    execution_id: uuid.UUID,
    org_id: uuid.UUID,
    workflow_id: uuid.UUID,
    version: int,
    input: dict[str, Any],
    origin: Origin,
) -> WorkflowExecution:
    """A new queued execution's row (its definition is the caller's to set)."""
    return WorkflowExecution(
        id=execution_id,
        org_id=org_id,
        workflow_id=workflow_id,
        workflow_version=version,
        triggered_by=origin.user_id,
        status=ExecutionStatus.QUEUED,
        input=input,
        request_id=origin.request_id,
        trigger_kind=origin.kind,
        trigger_id=origin.trigger_id,
        trigger_depth=origin.depth,
        root_execution_id=origin.root_execution_id,
    )


async def _start_with_key(
    *,
    db: AsyncSession,
    org_id: uuid.UUID,
    workflow_id: uuid.UUID,
    input: dict[str, Any],
    max_queued: int | None,
    origin: Origin,
    key: str,
    ttl_seconds: int,
    digest: str,
) -> Started:
    """`start_execution` with an idempotency key, through the ORM (a start with a key takes
    the key first, then finds or makes its execution)."""
    if max_queued is None:
        workflow, queued = await get_workflow(db=db, workflow_id=workflow_id), None
    else:  # the workflow and the organization's queued count in one round trip
        row = (
            await db.execute(
                select(Workflow, queued_count(org_id, max_queued)).where(Workflow.id == workflow_id)
            )
        ).first()
        if row is None:
            raise NotFound("workflow not found")
        workflow, queued = row
    if not workflow.enabled:
        raise Conflict("the workflow is disabled; enable it to start it", code="workflow_disabled")
    check_input(workflow.definition, input)
    found = await _claim_key(
        db,
        org_id=workflow.org_id,
        workflow_id=workflow.id,
        key=key,
        digest=digest,
        ttl_seconds=ttl_seconds,
    )
    if isinstance(found, WorkflowExecution):
        return Started(found, created=False)
    if max_queued is not None:
        check_queue_room(queued, max_queued)
    execution = queued_execution(
        found, workflow.org_id, workflow.id, workflow.version, input, origin
    )
    execution.definition = workflow.definition
    db.add(execution)
    await db.flush()
    return Started(execution)


async def get_execution(
    *, db: AsyncSession, execution_id: uuid.UUID
) -> tuple[WorkflowExecution, list[ExecutionStep]]:
    execution = await db.get(WorkflowExecution, execution_id)
    if execution is None:
        raise NotFound("execution not found")
    steps = await db.execute(
        select(ExecutionStep)
        .where(ExecutionStep.execution_id == execution_id)
        .order_by(ExecutionStep.position)
    )
    return execution, list(steps.scalars())


async def agent_step_turns(
    *, db: AsyncSession, execution_id: uuid.UUID, step_id: str
) -> list[AgentTurn]:
    """An agent step's model turns and tool calls, in conversation order; NotFound when the
    execution is not the organization's or has no agent step `step_id`."""
    execution = await db.get(WorkflowExecution, execution_id)
    if execution is None:
        raise NotFound("execution not found")
    steps = (execution.definition or {}).get("steps", [])
    if not any(s.get("id") == step_id and s.get("type") == "agent" for s in steps):
        raise NotFound(f"the execution has no agent step {step_id!r}")
    return await agent_turns.step_records(db, execution_id=execution_id, step_id=step_id)


async def items_progress(
    *, db: AsyncSession, execution: WorkflowExecution
) -> dict[str, dict[str, int]]:
    """For each for_each step of the execution: its items' counts by status, and `total`."""
    if not any(s.get("for_each") for s in (execution.definition or {}).get("steps", [])):
        return {}
    rows = await db.execute(
        select(ExecutionStepItem.step_id, ExecutionStepItem.status, func.count())
        .where(ExecutionStepItem.execution_id == execution.id)
        .group_by(ExecutionStepItem.step_id, ExecutionStepItem.status)
    )
    progress: dict[str, dict[str, int]] = {}
    for step_id, status, count in rows:
        counts = progress.setdefault(
            step_id, {"total": 0, "succeeded": 0, "failed": 0, "running": 0, "waiting": 0}
        )
        counts["total"] += count
        key = str(status) if status in counts else "running"  # pending: about to run again
        counts[key] += count
    return progress


CHILDREN_SHOWN = 100


async def list_children(
    *, db: AsyncSession, execution: WorkflowExecution, limit: int = CHILDREN_SHOWN
) -> list[WorkflowExecution]:
    """The sub-workflow executions the execution's `workflow` steps started (at most `limit`),
    by step and item."""
    if not any(s.get("type") == "workflow" for s in (execution.definition or {}).get("steps", [])):
        return []
    rows = await db.execute(
        select(WorkflowExecution)
        .where(WorkflowExecution.parent_execution_id == execution.id)
        .order_by(
            WorkflowExecution.parent_step_id,
            WorkflowExecution.parent_item_index.nulls_first(),
            WorkflowExecution.created_at,
        )
        .limit(limit)
    )
    return list(rows.scalars())


async def workflow_names(
    *, db: AsyncSession, execution_ids: set[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The name of the workflow each execution runs."""
    if not execution_ids:
        return {}
    rows = await db.execute(
        select(WorkflowExecution.id, Workflow.name)
        .join(Workflow, Workflow.id == WorkflowExecution.workflow_id)
        .where(WorkflowExecution.id.in_(execution_ids))
    )
    return {row.id: row.name for row in rows}


# The columns an execution shows in a list (ExecutionOut), read on the asyncpg connection
# (db/driver.py): the API's list endpoint is one of its hottest reads. Unfiltered, the function
# of migration 0024 reads the same columns and sets the tenant itself.
_LISTED = (
    "id, workflow_id, workflow_version, status, input, output, error, attempts, triggered_by, "
    "created_at, started_at, finished_at, cancel_requested_at, wake_at, parent_execution_id, "
    "parent_step_id, depth, trigger_kind, trigger_id, retry_of"
)
_RECENT = "select * from taskloom_recent_executions($1, $2, $3, $4, $5, $6)"


def filtered(
    status: ExecutionStatus | None,
    workflow_id: uuid.UUID | None,
    since: datetime | None,
    until: datetime | None,
) -> bool:
    """Whether a list asks for more than the newest page after a cursor: then it needs a
    tenant transaction (db/tenancy.tenant_reads); else any connection will do, autocommit too."""
    return status is not None or workflow_id is not None or since is not None or until is not None


async def list_executions(
    *,
    reads: Statements,
    principal: Principal,
    status: ExecutionStatus | None = None,
    workflow_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[ExecutionOut], str | None]:
    """Newest first; `cursor` continues after the last item of the previous page. `reads` is
    the caller's tenant transaction (db/tenancy.tenant_reads, or a session's connection:
    db/driver.session_connection), or a connection in autocommit when the list is not
    `filtered`."""
    limit = max(1, min(limit, MAX_PAGE))
    after_time, after_id = decode_cursor(cursor) if cursor else (None, None)
    if not filtered(status, workflow_id, since, until):
        tenant = tenant_arguments(principal.current_org(), principal.user_id)
        rows = await reads.fetch(_RECENT, *tenant, after_time, after_id, limit + 1)
    else:
        args: list[Any] = [principal.current_org()]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        where = ["org_id = $1"]
        if status is not None:
            where.append(f"status = {arg(status.value)}")
        if workflow_id is not None:
            where.append(f"workflow_id = {arg(workflow_id)}")
        if since is not None:
            where.append(f"created_at >= {arg(since)}")
        if until is not None:
            where.append(f"created_at < {arg(until)}")
        if after_time is not None:
            where.append(f"(created_at, id) < ({arg(after_time)}, {arg(after_id)})")
        rows = await reads.fetch(  # fixed fragments and $n placeholders only: no value in the text
            f"select {_LISTED} from workflow_executions where {' and '.join(where)} "  # noqa: S608
            f"order by created_at desc, id desc limit {arg(limit + 1)}",
            *args,
        )
    items = [ExecutionOut(**row) for row in rows[:limit]]
    more = len(rows) > limit
    return items, (encode_cursor(items[-1].created_at, items[-1].id) if more else None)


@dataclass(frozen=True)
class Cancellation:
    """A cancel's effects for the caller to apply after the commit: executions to withdraw from
    the queue (cancelled while queued or waiting: it and its descendants), and a parent to wake
    (a child ended: its step fails)."""

    execution: WorkflowExecution
    withdrawn: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)  # (org, id)
    wake: uuid.UUID | None = None


_DESCENDANTS = text(
    """
    with recursive tree(id) as (
        select id from workflow_executions where parent_execution_id = :root
        union all
        select e.id from workflow_executions e join tree on e.parent_execution_id = tree.id
    )
    select id from tree
    """
)


async def cancel_execution(
    *, db: AsyncSession, principal: Principal, context: AuditContext, execution_id: uuid.UUID
) -> Cancellation:
    """Queued or waiting ⇒ cancelled now; running ⇒ cancelled by its worker within moments
    (between steps, or while steps run: they are interrupted). Its sub-workflow executions,
    and theirs, are cancelled the same way. The caller applies the Cancellation after the
    commit (a worker that takes a withdrawn job first sees it cancelled)."""
    execution = await db.get(WorkflowExecution, execution_id, with_for_update=True)
    if execution is None:
        raise NotFound("execution not found")
    if execution.status in (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED):
        raise Conflict(f"the execution already {execution.status}")
    if execution.status == ExecutionStatus.CANCELLED:
        return Cancellation(execution)  # cancelling twice is not an error
    withdrawn = []
    now = _now()
    descendants = [row[0] for row in await db.execute(_DESCENDANTS, {"root": execution.id})]
    rows = await db.execute(
        select(WorkflowExecution)
        .where(WorkflowExecution.id.in_([execution.id, *descendants]))
        .order_by(WorkflowExecution.id)
        .with_for_update()
    )
    for each in rows.scalars():
        if each.status in TERMINAL:
            continue
        if each.status in (ExecutionStatus.QUEUED, ExecutionStatus.WAITING):
            each.status = ExecutionStatus.CANCELLED
            each.finished_at = now
            each.wake_at = None
            withdrawn.append((each.org_id, each.id))
        each.cancel_requested_at = now
    wake = None
    if execution.status == ExecutionStatus.CANCELLED and execution.parent_execution_id:
        await db.execute(
            select(WorkflowExecution.id)
            .where(WorkflowExecution.id == execution.parent_execution_id)
            .with_for_update()
        )
        if await state.wake(db, execution.parent_execution_id):
            wake = execution.parent_execution_id
    await db.flush()
    await db.refresh(execution)
    await _audit(db, principal, context, AuditAction.EXECUTION_CANCEL, "execution", execution.id)
    return Cancellation(execution, withdrawn, wake)


async def retry_execution(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    execution_id: uuid.UUID,
    max_queued: int | None,
) -> WorkflowExecution:
    """Queue a failed or cancelled execution again (TooManyQueued when its organization has
    `max_queued` waiting; None as for `start_execution`). Steps that succeeded keep their
    output and are not run again; the first unfinished step starts over. The caller resubmits
    it to the queue."""
    execution = await db.get(WorkflowExecution, execution_id, with_for_update=True)
    if execution is None:
        raise NotFound("execution not found")
    if execution.status not in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        raise Conflict(
            f"only failed or cancelled executions can be retried, not {execution.status}"
        )
    if max_queued is not None:
        queued = await db.scalar(select(queued_count(execution.org_id, max_queued)))
        check_queue_room(queued, max_queued)
    execution.status = ExecutionStatus.QUEUED
    execution.error = None
    execution.output = None
    execution.finished_at = None
    execution.cancel_requested_at = None
    execution.wake_at = None
    # What did not succeed starts over: its steps and for-each items (a child or an approval
    # it waited for is asked again).
    for model in (ExecutionStep, ExecutionStepItem):
        await db.execute(
            update(model)
            .where(model.execution_id == execution_id, model.status != StepStatus.SUCCEEDED)
            .values(
                status=StepStatus.PENDING, finished_at=None, wake_at=None, child_execution_id=None
            )
        )
    await db.execute(
        delete(ExecutionApproval).where(
            ExecutionApproval.execution_id == execution_id,
            ExecutionApproval.status.in_([ApprovalStatus.PENDING, ApprovalStatus.TIMED_OUT]),
        )
    )
    await db.flush()
    await db.refresh(execution)
    await _audit(db, principal, context, AuditAction.EXECUTION_RETRY, "execution", execution.id)
    return execution


async def failed_executions(
    *, db: AsyncSession, principal: Principal, limit: int = 100
) -> list[WorkflowExecution]:
    rows = await db.execute(
        select(WorkflowExecution)
        .where(
            WorkflowExecution.org_id == principal.current_org(),
            WorkflowExecution.status == ExecutionStatus.FAILED,
        )
        .order_by(WorkflowExecution.finished_at.desc().nulls_last())
        .limit(max(1, min(limit, MAX_PAGE)))
    )
    return list(rows.scalars())


def _now() -> datetime:
    return datetime.now(UTC)
