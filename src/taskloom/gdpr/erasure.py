"""Account erasure (GDPR Art. 17): one transaction, in dependency order, on the privileged role
(a person's rows span organizations). What happens to each kind of row is in docs/GDPR.md.

Audit rows keep their place in the hash chain: their personal fields and salt are cleared and
the actor becomes a pseudonym (a keyed HMAC of the user id), while the salted content digest the
chain covers stays (ADR 0004). Nothing else that names the person remains.

Rows are found by the person's id and email, compared for equality: never by a pattern (an email
may be `%@%.%`) and never by a name anyone can pick.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, cast, delete, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB, JSONPATH
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.models import AuditLog
from taskloom.audit.service import AuditContext
from taskloom.auth.models import ApiKey, RefreshToken, Session, User
from taskloom.config import Settings
from taskloom.errors import Conflict
from taskloom.executions.models import (
    AgentTurn,
    ExecutionApproval,
    ExecutionStatus,
    ExecutionStep,
    ExecutionStepItem,
    WorkflowExecution,
)
from taskloom.flags.models import FeatureFlagOverride
from taskloom.gdpr.inventory import user_tables
from taskloom.gdpr.models import GdprRequest
from taskloom.orgs import invitations
from taskloom.orgs import service as orgs
from taskloom.orgs.models import Membership, Organization, Role
from taskloom.queue.jobs import KEEP_FAILED
from taskloom.sso.models import SsoIdentity, SsoSession

# Rows that are the person's own and go entirely (the rest lose the reference only).
_DELETED = (SsoSession, SsoIdentity, RefreshToken, Session, ApiKey, Membership)
# Any value, at any depth of a JSON document, equal to $m (a jsonpath constant, not user input).
_EQUALS_M = literal("$.** ? (@ == $m)", Text)


@dataclass
class Erasure:
    user_id: uuid.UUID
    email: str
    pseudonym: str
    deleted_orgs: list[uuid.UUID] = field(default_factory=list)
    kept_orgs: list[uuid.UUID] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # (org, execution): their queued or running executions, cancelled here; their jobs and places
    # in the fair scheduler are withdrawn after the commit.
    cancelled_executions: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)
    # Other executions whose job BullMQ may still keep, withdrawn likewise: see `_leftover_jobs`.
    leftover_jobs: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)
    export_requests: list[uuid.UUID] = field(default_factory=list)  # their jobs, likewise


def pseudonym(settings: Settings, user_id: uuid.UUID) -> str:
    """Stable for one user, meaningless without the server's secret."""
    key = hashlib.sha256(
        b"taskloom.gdpr.pseudonym|" + settings.jwt_secret.get_secret_value().encode()
    )
    digest = hmac.new(key.digest(), str(user_id).encode(), hashlib.sha256).hexdigest()
    return f"erased-{digest[:24]}"


async def lock_memberships(db: AsyncSession, user_id: uuid.UUID) -> None:
    """Lock every membership of every organization the person belongs to, until the commit,
    in one order (organization, then row) so two erasures cannot deadlock. Two owners erasing
    themselves from one organization are then serialized, and the second sees the first gone;
    role changes and removals (orgs/service.py, which lock the owner rows) wait too."""
    theirs = select(Membership.org_id).where(Membership.user_id == user_id)
    await db.execute(
        select(Membership.id)
        .where(Membership.org_id.in_(theirs))
        .order_by(Membership.org_id, Membership.id)
        .with_for_update()
    )


async def blocking_orgs(db: AsyncSession, user_id: uuid.UUID) -> list[dict[str, Any]]:
    """Organizations the person owns alone while others are members: erasing them would leave
    those members without an owner. Acting on the answer needs `lock_memberships` first."""
    owned = (
        await db.execute(
            select(Organization.id, Organization.name)
            .join(Membership, Membership.org_id == Organization.id)
            .where(Membership.user_id == user_id, Membership.role == Role.OWNER)
        )
    ).all()
    blocked = []
    for org_id, name in owned:
        counts = (
            await db.execute(
                select(
                    func.count().filter(Membership.user_id != user_id),
                    func.count().filter(
                        Membership.user_id != user_id, Membership.role == Role.OWNER
                    ),
                ).where(Membership.org_id == org_id)
            )
        ).one()
        others, other_owners = counts
        if others and not other_owners:
            blocked.append({"org_id": str(org_id), "name": name, "other_members": others})
    return blocked


async def erase(
    db: AsyncSession,
    *,
    settings: Settings,
    user_id: uuid.UUID,
    context: AuditContext,
) -> Erasure:
    """Erase the user inside the caller's (privileged) transaction, or raise Conflict naming
    the organizations that need another owner first (then nothing has changed)."""
    user = await db.get(User, user_id, with_for_update=True)
    if user is None:
        raise Conflict("the account is already gone")
    await lock_memberships(db, user_id)
    blocked = await blocking_orgs(db, user_id)
    if blocked:
        raise Conflict(
            "transfer ownership first: you are the only owner of organizations with other "
            "members (make another member an owner, or remove the other members)",
            code="last_owner",
            details={"organizations": blocked},
        )
    result = Erasure(user_id=user_id, email=user.email, pseudonym=pseudonym(settings, user_id))
    memberships = (
        await db.execute(select(Membership.org_id).where(Membership.user_id == user_id))
    ).scalars()
    for org_id in list(memberships):
        members = await db.scalar(
            select(func.count()).select_from(Membership).where(Membership.org_id == org_id)
        )
        (result.deleted_orgs if members == 1 else result.kept_orgs).append(org_id)

    result.leftover_jobs = await _leftover_jobs(db, result)
    # 1. Organizations of which the person is the only member go with all their data.
    if result.deleted_orgs:
        deleted = await db.execute(
            delete(Organization).where(Organization.id.in_(result.deleted_orgs))
        )
        result.counts["organizations"] = _rowcount(deleted)
    # ... the others lose the name and slug registration built from the person's name.
    anonymous = AuditContext(request_id=context.request_id)
    renamed = await orgs.forget_default_names(
        db=db, org_ids=result.kept_orgs, display_name=user.display_name, context=anonymous
    )
    if renamed:
        result.counts["organizations.renamed"] = len(renamed)
    # 2. Executions they started: queued/running ones are cancelled; payloads are erased.
    await _executions(db, settings, result)
    # 3. Their data-protection requests, and with them any export archive (its link then
    # answers 404). The erasure itself is recorded afresh, under the pseudonym.
    requests = await db.execute(
        delete(GdprRequest).where(GdprRequest.user_id == user_id).returning(GdprRequest.id)
    )
    result.export_requests = list(requests.scalars())
    result.counts["gdpr_requests"] = len(result.export_requests)
    # 4. Audit rows about them: pseudonymised in place (before the FK would null the actor).
    result.counts["audit_logs"] = await _pseudonymise_audit(
        db, result, orgs.default_name(user.display_name)
    )
    # 5. Their own rows.
    for model in _DELETED:
        own = await db.execute(delete(model).where(model.user_id == user_id))
        result.counts[model.__tablename__] = _rowcount(own)
    overrides = await db.execute(
        delete(FeatureFlagOverride).where(FeatureFlagOverride.user_id == user_id)
    )
    result.counts["feature_flag_overrides"] = _rowcount(overrides)
    # Invitations addressed to their email (no foreign key: the address may predate the account).
    result.counts["invitations"] = await invitations.delete_invitations_to(db=db, email=user.email)
    # 6. Every other reference (created_by, triggered_by, invited_by, ...) becomes NULL.
    for user_table in user_tables():
        if user_table.name in ("users", "audit_logs", *(m.__tablename__ for m in _DELETED)):
            continue
        for column in user_table.columns:
            if user_table.name == "feature_flag_overrides" and column == "user_id":
                continue
            nulled = await db.execute(
                update(user_table.table)
                .where(user_table.table.c[column] == user_id)
                .values({column: None})
            )
            if _rowcount(nulled):
                key = f"{user_table.name}.{column}"
                result.counts[key] = result.counts.get(key, 0) + _rowcount(nulled)
    # 7. The account itself.
    await db.execute(delete(User).where(User.id == user_id))
    result.counts["users"] = 1
    await _record(db, result, context)
    return result


async def _leftover_jobs(db: AsyncSession, result: Erasure) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Executions whose job BullMQ may still hold (it keeps failed jobs for KEEP_FAILED, with
    reasons that, before they were codes only, could quote a person's input): theirs that
    failed lately, and the unfinished or lately failed ones of the organizations deleted with
    them (which nobody would cancel). Read before those organizations go."""
    e = WorkflowExecution
    kept_since = datetime.now(UTC) - timedelta(seconds=KEEP_FAILED["age"])
    lately_failed = and_(e.status == ExecutionStatus.FAILED, e.finished_at >= kept_since)
    unfinished = e.status.in_(
        [ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.WAITING]
    )
    found = await db.execute(
        select(e.org_id, e.id).where(
            or_(
                and_(e.triggered_by == result.user_id, lately_failed),
                and_(e.org_id.in_(result.deleted_orgs), or_(unfinished, lately_failed)),
            )
        )
    )
    return [(org_id, execution_id) for org_id, execution_id in found]


async def _executions(db: AsyncSession, settings: Settings, result: Erasure) -> None:
    mine = WorkflowExecution.triggered_by == result.user_id
    cancelled = await db.execute(
        update(WorkflowExecution)
        .where(
            mine,
            WorkflowExecution.status.in_(
                [ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.WAITING]
            ),
        )
        .values(
            status=ExecutionStatus.CANCELLED,
            cancel_requested_at=func.now(),
            finished_at=func.now(),
        )
        .returning(WorkflowExecution.org_id, WorkflowExecution.id)
    )
    result.cancelled_executions = [(org_id, execution_id) for org_id, execution_id in cancelled]
    # Their decisions stay (the executions went on because of them) without their words; the
    # decider becomes NULL with their user row.
    comments = await db.execute(
        update(ExecutionApproval)
        .where(
            ExecutionApproval.decided_by == result.user_id, ExecutionApproval.comment.isnot(None)
        )
        .values(comment=None)
    )
    result.counts["execution_approvals.comment"] = _rowcount(comments)
    if not settings.gdpr_erase_execution_payloads:
        return
    executions = select(WorkflowExecution.id).where(mine).scalar_subquery()
    steps = await db.execute(
        update(ExecutionStep)
        .where(ExecutionStep.execution_id.in_(executions))
        .values(input=None, output=None, error=None)
    )
    items = await db.execute(
        update(ExecutionStepItem)
        .where(ExecutionStepItem.execution_id.in_(executions))
        .values(input=None, output=None, error=None)
    )
    turns = await db.execute(
        update(AgentTurn)
        .where(AgentTurn.execution_id.in_(executions))
        .values(input=None, output=None, error=None)
    )
    payloads = await db.execute(
        update(WorkflowExecution)
        .where(mine)
        .values(input={}, output=None, error=None, request_id=None)
    )
    result.counts["workflow_executions.payload"] = _rowcount(payloads)
    result.counts["execution_steps.payload"] = _rowcount(steps)
    result.counts["execution_step_items.payload"] = _rowcount(items)
    result.counts["execution_agent_turns.payload"] = _rowcount(turns)


async def _pseudonymise_audit(db: AsyncSession, result: Erasure, default_org_name: str) -> int:
    """Clear the person from every audit row about them (as actor, as the resource, or a details
    value equal to their id or email) and drop those rows' salts; the content digest, and so
    the chain, is untouched. Renames recorded in the organizations they leave lose the name
    registration built from theirs. Another actor's fields on such a row stay (but are no
    longer verifiable)."""
    user = str(result.user_id)
    # Only identifiers unique to the person: matching a display name ("Ann", "e") would let
    # anyone erase themselves to scrub other people's audit rows across organizations.
    mentions = {user: result.pseudonym, result.email: result.pseudonym}
    renames = and_(
        AuditLog.org_id.in_(result.kept_orgs),
        AuditLog.action == AuditAction.ORG_UPDATE.value,
        _mentions(default_org_name),
    )
    rows = (
        await db.execute(
            select(AuditLog)
            .where(
                or_(
                    AuditLog.actor_user_id == result.user_id,
                    AuditLog.resource_id == user,
                    *(_mentions(m) for m in mentions),
                    renames,
                )
            )
            .with_for_update()
        )
    ).scalars()
    count = 0
    now = datetime.now(UTC)
    for row in rows:
        if row.actor_user_id == result.user_id:
            # Their own actions: who, from where and with what browser all go.
            row.actor_pseudonym = result.pseudonym
            row.actor_user_id = None
            row.ip = None
            row.user_agent = None
        if row.resource_id == user:
            row.resource_id = result.pseudonym
        replacements = dict(mentions)
        if row.org_id in result.kept_orgs and row.action == AuditAction.ORG_UPDATE.value:
            replacements[default_org_name] = orgs.neutral_name(row.org_id)
        row.details = _replace(row.details, replacements)
        row.content_salt = None
        row.redacted_at = now
        count += 1
    await db.flush()
    return count


def _mentions(value: str) -> ColumnElement[bool]:
    """Whether any value in the row's details equals `value`: exactly, never as a pattern."""
    variables = cast(literal(json.dumps({"m": value}), Text), JSONB)
    return func.jsonb_path_exists(AuditLog.details, cast(_EQUALS_M, JSONPATH), variables)


def _rowcount(result: Any) -> int:
    """Rows an UPDATE/DELETE touched (a CursorResult's rowcount)."""
    return int(getattr(result, "rowcount", 0) or 0)


def _replace(value: Any, replacements: dict[str, str]) -> Any:
    """`value` with every string equal to a key of `replacements` replaced (at any depth)."""
    if isinstance(value, str):
        return replacements.get(value, value)
    if isinstance(value, list):
        return [_replace(item, replacements) for item in value]
    if isinstance(value, dict):
        return {key: _replace(item, replacements) for key, item in value.items()}
    return value


async def _record(db: AsyncSession, result: Erasure, context: AuditContext) -> None:
    """`user.erased` in the instance chain and in each organization the person leaves; it holds
    the pseudonym and row counts, nothing personal."""
    details = {"pseudonym": result.pseudonym, "rows": result.counts}
    anonymous = AuditContext(request_id=context.request_id)  # no actor: they are gone
    for org_id in [None, *result.kept_orgs]:
        await audit.record(
            session=db,
            context=anonymous,
            action=AuditAction.USER_ERASED,
            org_id=org_id,
            resource_type="user",
            resource_id=result.pseudonym,
            details=details,
        )
    db.add(
        GdprRequest(
            user_id=None,
            kind="erasure",
            status="completed",
            subject_pseudonym=result.pseudonym,
            details=details,
            completed_at=datetime.now(UTC),
        )
    )
    await db.flush()
