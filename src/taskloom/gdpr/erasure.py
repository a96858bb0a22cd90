"""Account erasure (GDPR Art. 17): one transaction, in dependency order, on the privileged role
(a person's rows span organizations). What happens to each kind of row is in docs/GDPR.md.

Audit rows keep their place in the hash chain: their personal fields and salt are cleared and
the actor becomes a pseudonym (a keyed HMAC of the user id), while the salted content digest the
chain covers stays (ADR 0004). Nothing else that names the person remains.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import String, cast, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.models import AuditLog
from taskloom.audit.service import AuditContext
from taskloom.auth.models import ApiKey, RefreshToken, Session, User
from taskloom.config import Settings
from taskloom.errors import Conflict
from taskloom.flags.models import FeatureFlagOverride
from taskloom.gdpr.inventory import user_tables
from taskloom.gdpr.models import GdprRequest
from taskloom.orgs import invitations
from taskloom.orgs.models import Membership, Organization, Role
from taskloom.workflows.models import ExecutionStatus, ExecutionStep, WorkflowExecution

# Rows that are the person's own and go entirely (the rest lose the reference only).
_DELETED = (RefreshToken, Session, ApiKey, Membership)


@dataclass
class Erasure:
    user_id: uuid.UUID
    email: str
    pseudonym: str
    deleted_orgs: list[uuid.UUID] = field(default_factory=list)
    kept_orgs: list[uuid.UUID] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    cancelled_executions: list[uuid.UUID] = field(default_factory=list)


def pseudonym(settings: Settings, user_id: uuid.UUID) -> str:
    """Stable for one user, meaningless without the server's secret."""
    key = hashlib.sha256(
        b"taskloom.gdpr.pseudonym|" + settings.jwt_secret.get_secret_value().encode()
    )
    digest = hmac.new(key.digest(), str(user_id).encode(), hashlib.sha256).hexdigest()
    return f"erased-{digest[:24]}"


async def blocking_orgs(db: AsyncSession, user_id: uuid.UUID) -> list[dict[str, Any]]:
    """Organizations the person owns alone while others are members: erasing them would leave
    those members without an owner."""
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

    # 1. Organizations of which the person is the only member go with all their data.
    if result.deleted_orgs:
        deleted = await db.execute(
            delete(Organization).where(Organization.id.in_(result.deleted_orgs))
        )
        result.counts["organizations"] = _rowcount(deleted)
    # 2. Executions they started: queued/running ones are cancelled; payloads are erased.
    await _executions(db, settings, result)
    # 3. Audit rows about them: pseudonymised in place (before the FK would null the actor).
    result.counts["audit_logs"] = await _pseudonymise_audit(db, result)
    # 4. Their own rows.
    for model in _DELETED:
        own = await db.execute(delete(model).where(model.user_id == user_id))
        result.counts[model.__tablename__] = _rowcount(own)
    overrides = await db.execute(
        delete(FeatureFlagOverride).where(FeatureFlagOverride.user_id == user_id)
    )
    result.counts["feature_flag_overrides"] = _rowcount(overrides)
    # Invitations addressed to their email (no foreign key: the address may predate the account).
    result.counts["invitations"] = await invitations.delete_invitations_to(db=db, email=user.email)
    # 5. Every other reference (created_by, triggered_by, invited_by, ...) becomes NULL.
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
    # 6. The account itself.
    await db.execute(delete(User).where(User.id == user_id))
    result.counts["users"] = 1
    await _record(db, result, context)
    return result


async def _executions(db: AsyncSession, settings: Settings, result: Erasure) -> None:
    mine = WorkflowExecution.triggered_by == result.user_id
    cancelled = await db.execute(
        update(WorkflowExecution)
        .where(
            mine, WorkflowExecution.status.in_([ExecutionStatus.QUEUED, ExecutionStatus.RUNNING])
        )
        .values(
            status=ExecutionStatus.CANCELLED,
            cancel_requested_at=func.now(),
            finished_at=func.now(),
        )
        .returning(WorkflowExecution.id)
    )
    result.cancelled_executions = list(cancelled.scalars())
    if not settings.gdpr_erase_execution_payloads:
        return
    executions = select(WorkflowExecution.id).where(mine).scalar_subquery()
    steps = await db.execute(
        update(ExecutionStep)
        .where(ExecutionStep.execution_id.in_(executions))
        .values(input=None, output=None, error=None)
    )
    payloads = await db.execute(
        update(WorkflowExecution)
        .where(mine)
        .values(input={}, output=None, error=None, request_id=None)
    )
    result.counts["workflow_executions.payload"] = _rowcount(payloads)
    result.counts["execution_steps.payload"] = _rowcount(steps)


async def _pseudonymise_audit(db: AsyncSession, result: Erasure) -> int:
    """Clear the person from every audit row about them (as actor, as the resource, or named in
    the details) and drop those rows' salts; the content digest, and so the chain, is
    untouched. Another actor's fields on such a row stay (but are no longer verifiable)."""
    user = str(result.user_id)
    # Only identifiers unique to the person: matching a display name ("Ann", "e") would let
    # anyone erase themselves to scrub other people's audit rows across organizations.
    mentions = [user, result.email]
    rows = (
        await db.execute(
            select(AuditLog)
            .where(
                or_(
                    AuditLog.actor_user_id == result.user_id,
                    AuditLog.resource_id == user,
                    *(cast(AuditLog.details, String).contains(m) for m in mentions if m),
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
        row.details = _replace(row.details, mentions, result.pseudonym)
        row.content_salt = None
        row.redacted_at = now
        count += 1
    await db.flush()
    return count


def _rowcount(result: Any) -> int:
    """Rows an UPDATE/DELETE touched (a CursorResult's rowcount)."""
    return int(getattr(result, "rowcount", 0) or 0)


def _replace(value: Any, mentions: list[str], replacement: str) -> Any:
    text_value = json.dumps(value)
    for mention in mentions:
        if mention:
            text_value = text_value.replace(json.dumps(mention)[1:-1], replacement)
    return json.loads(text_value)


async def _record(db: AsyncSession, result: Erasure, context: AuditContext) -> None:
    """`user.erased` in the instance chain and in each organization the person leaves; it holds
    the pseudonym and row counts, nothing personal."""
    details = {"pseudonym": result.pseudonym, "rows": result.counts}
    anonymous = AuditContext(request_id=context.request_id)
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
