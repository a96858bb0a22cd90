"""/api/audit-logs: everyone reads the events they caused; owners and admins read their
organization's (`scope=org`) and verify its hash chain. Reading is itself audited."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import and_, or_, select

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.models import AuditLog
from taskloom.auth.access import access
from taskloom.auth.deps import Admin, Context, RequestContext
from taskloom.errors import BadRequest, Forbidden
from taskloom.orgs.models import Role
from taskloom.pagination import decode_cursor, encode_cursor

router = APIRouter(prefix="/api/audit-logs", tags=["audit"])


class AuditLogOut(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID | None
    seq: int
    created_at: datetime
    actor_user_id: uuid.UUID | None
    actor_pseudonym: str | None
    actor_api_key_id: uuid.UUID | None
    action: str
    resource_type: str | None
    resource_id: str | None
    ip: str | None
    user_agent: str | None
    request_id: str | None
    success: bool
    details: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditLogOut]
    next_cursor: str | None


class ChainOut(BaseModel):
    ok: bool
    rows_checked: int
    redacted_rows: int
    first_broken_seq: int | None
    reason: str | None


def _action(value: str | None) -> str | None:
    if value is None:
        return None
    valid = sorted(a.value for a in AuditAction)
    if value not in valid:
        raise BadRequest(
            f"unknown action {value!r}; valid actions: {', '.join(valid)}",
            code="invalid_action",
            details={"valid_actions": valid},
        )
    return value


@router.get("", openapi_extra=access("authenticated"))
async def list_audit_logs(
    ctx: Context,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    cursor: str | None = None,
    action: str | None = None,
    resource_type: Annotated[str | None, Query(max_length=64)] = None,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    scope: Literal["me", "org"] = "me",
) -> AuditPage:
    """Newest first. `scope=me`: events you caused, in any organization; `scope=org` (owners
    and admins): every event of the current organization."""
    if from_ and to and from_ > to:
        raise BadRequest("`from` is after `to`", code="invalid_range")
    if cursor and offset:
        raise BadRequest("use either `cursor` or `offset`, not both", code="invalid_paging")
    query = select(AuditLog)
    if scope == "org":
        if ctx.principal.org_id is None or not ctx.principal.has_role(Role.ADMIN):
            raise Forbidden("reading the organization's audit log needs the admin role")
        query = query.where(AuditLog.org_id == ctx.principal.org_id)
    else:
        query = query.where(AuditLog.actor_user_id == ctx.principal.user_id)
    if (wanted := _action(action)) is not None:
        query = query.where(AuditLog.action == wanted)
    if resource_type is not None:
        query = query.where(AuditLog.resource_type == resource_type)
    if from_ is not None:
        query = query.where(AuditLog.created_at >= from_)
    if to is not None:
        query = query.where(AuditLog.created_at <= to)
    if cursor:
        when, ident = decode_cursor(cursor)
        query = query.where(
            or_(AuditLog.created_at < when, and_(AuditLog.created_at == when, AuditLog.id < ident))
        )
    rows = list(
        (
            await ctx.db.execute(
                query.order_by(AuditLog.created_at.desc(), AuditLog.id.desc())
                .offset(offset)
                .limit(limit + 1)
            )
        ).scalars()
    )
    page, more = rows[:limit], len(rows) > limit
    await _audited(ctx, AuditAction.AUDIT_READ, {"scope": scope, "returned": len(page)})
    return AuditPage(
        items=[_out(row) for row in page],
        next_cursor=encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    )


@router.get("/verify", openapi_extra=access("admin"))
async def verify(ctx: Admin) -> ChainOut:
    """Walk the current organization's hash chain."""
    result = await audit.verify_chain(session=ctx.db, org_id=ctx.principal.org_id)
    await _audited(ctx, AuditAction.AUDIT_VERIFY, {"ok": result.ok})
    return ChainOut(
        ok=result.ok,
        rows_checked=result.rows_checked,
        redacted_rows=result.redacted_rows,
        first_broken_seq=result.first_broken_seq,
        reason=result.reason,
    )


def _out(row: AuditLog) -> AuditLogOut:
    fields = {name: getattr(row, name) for name in AuditLogOut.model_fields}
    fields["ip"] = str(row.ip) if row.ip is not None else None  # inet comes back as an object
    return AuditLogOut.model_validate(fields)


async def _audited(ctx: RequestContext, action: AuditAction, details: dict[str, Any]) -> None:
    if ctx.principal.org_id is None:
        return  # the instance chain is written by the privileged role only
    await audit.record(
        session=ctx.db,
        context=ctx.audit,
        action=action,
        org_id=ctx.principal.org_id,
        resource_type="audit_log",
        details=details,
    )
