"""/api/audit-logs: everyone reads the events they caused (an API key: those in its own
organization); owners and admins read their organization's (`scope=org`) and verify its hash
chain. Reading is itself audited."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from taskloom.audit import service as audit
from taskloom.audit.models import AuditLog
from taskloom.auth.access import access
from taskloom.auth.deps import Admin, Context
from taskloom.timestamps import UtcDatetime

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


@router.get("", openapi_extra=access("authenticated"))
async def list_audit_logs(
    ctx: Context,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    cursor: str | None = None,
    action: str | None = None,
    resource_type: Annotated[str | None, Query(max_length=64)] = None,
    from_: Annotated[UtcDatetime | None, Query(alias="from")] = None,
    to: UtcDatetime | None = None,
    scope: Literal["me", "org"] = "me",
) -> AuditPage:
    """Newest first. `scope=me`: events you caused, in any organization (through an API key:
    in the key's organization only); `scope=org` (owners and admins): every event of the current
    organization."""
    page, next_cursor = await audit.list_logs(
        session=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        scope=scope,
        action=action,
        resource_type=resource_type,
        since=from_,
        until=to,
        cursor=cursor,
        offset=offset,
        limit=limit,
    )
    return AuditPage(items=[_out(row) for row in page], next_cursor=next_cursor)


@router.get("/verify", openapi_extra=access("admin"))
async def verify(ctx: Admin) -> ChainOut:
    """Walk the current organization's hash chain."""
    result = await audit.verify_org_chain(
        session=ctx.db, principal=ctx.principal, context=ctx.audit
    )
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
