"""Write audit rows into a per-organization hash chain, and verify a chain.

Each row stores `prev_hash` (the previous row's `hash` in the same chain) and `hash`, a SHA-256
over its chain fields (id, org, seq, time, action, success), `prev_hash`, and `content_digest`,
a salted SHA-256 of everything else (actor, ip, user agent, resource, details). Erasing a person
(GDPR Art. 17) clears those fields and the salt but keeps the digest, so the chain still
verifies while nothing links the row to the person any more (ADR 0004).

Rows of one organization form one chain; events that belong to no organization (e.g. a failed
sign-in for an unknown email) form the instance chain. Appends to one chain are serialized with
a transaction-scoped advisory lock, so two concurrent requests can never fork it. The chain's
head (last seq and hash) is kept in `audit_chain_heads`, updated in the same transaction, so
verification also notices rows cut off the end. Editing or deleting any row breaks verification
there.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import and_, or_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit.actions import AuditAction
from taskloom.audit.models import AuditChainHead, AuditLog
from taskloom.auth.principal import Principal
from taskloom.errors import BadRequest, Forbidden
from taskloom.orgs.models import Role
from taskloom.pagination import decode_cursor, encode_cursor

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditContext:
    """Who did it and from where; built once per request."""

    actor_user_id: uuid.UUID | None = None
    actor_api_key_id: uuid.UUID | None = None
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class ChainVerification:
    ok: bool
    rows_checked: int
    first_broken_id: uuid.UUID | None = None
    first_broken_seq: int | None = None
    reason: str | None = None
    redacted_rows: int = 0  # rows whose personal content was erased (verifiable by digest only)


def _normalize_ip(ip: object) -> str | None:
    if ip is None:
        return None
    try:
        return str(ipaddress.ip_address(str(ip).split("/")[0]))
    except ValueError:
        return None


def _canonical(content: dict[str, Any]) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_digest(row: AuditLog, salt: str) -> str:
    """The salted digest of the row's personal-capable content."""
    content = {
        "actor_user_id": str(row.actor_user_id) if row.actor_user_id else None,
        "actor_api_key_id": str(row.actor_api_key_id) if row.actor_api_key_id else None,
        "resource_type": row.resource_type,
        "resource_id": row.resource_id,
        "ip": _normalize_ip(row.ip),
        "user_agent": row.user_agent,
        "request_id": row.request_id,
        "details": row.details,
    }
    return hashlib.sha256(salt.encode() + b"|" + _canonical(content)).hexdigest()


def _row_hash(row: AuditLog) -> str:
    content = {
        "id": str(row.id),
        "org_id": str(row.org_id) if row.org_id else None,
        "seq": row.seq,
        "created_at": row.created_at.astimezone(UTC).isoformat(),
        "action": row.action,
        "success": row.success,
        "content_digest": row.content_digest,
        "prev_hash": row.prev_hash,
    }
    return hashlib.sha256(_canonical(content)).hexdigest()


def seal(row: AuditLog) -> None:
    """Give a new row its salt, content digest and hash (prev_hash must be set)."""
    row.content_salt = secrets.token_hex(16)
    row.content_digest = content_digest(row, row.content_salt)
    row.hash = _row_hash(row)


def _json_as_stored(value: Any) -> Any:
    """`value` as PostgreSQL's jsonb will give it back, so the hash survives the round trip.
    jsonb keeps numbers as `numeric`: a float of magnitude >= 1e16 (always integral) comes back
    as an integer. NaN and infinities are not JSON and are refused."""
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("audit details cannot contain NaN or infinity")
        return int(value) if abs(value) >= 1e16 else value
    if isinstance(value, dict):
        return {str(k): _json_as_stored(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_as_stored(v) for v in value]
    return value


def _chain_key(org_id: uuid.UUID | None) -> str:
    return str(org_id) if org_id else "instance"


def _chain_filter(org_id: uuid.UUID | None) -> Any:
    return AuditLog.org_id == org_id if org_id else AuditLog.org_id.is_(None)


async def record(
    *,
    session: AsyncSession,
    context: AuditContext,
    action: AuditAction,
    org_id: uuid.UUID | None,
    resource_type: str | None = None,
    resource_id: object | None = None,
    success: bool = True,
    details: dict[str, Any] | None = None,
) -> AuditLog:
    """Append one row to the chain of `org_id` inside the caller's transaction."""
    await session.execute(
        text("select pg_advisory_xact_lock(hashtextextended(:chain, 0))"),
        {"chain": "taskloom.audit:" + _chain_key(org_id)},
    )
    last = (
        await session.execute(
            select(AuditLog.seq, AuditLog.hash)
            .where(_chain_filter(org_id))
            .order_by(AuditLog.seq.desc())
            .limit(1)
        )
    ).first()
    row = AuditLog(
        id=uuid.uuid4(),
        org_id=org_id,
        seq=(last.seq + 1) if last else 1,
        created_at=datetime.now(UTC),
        actor_user_id=context.actor_user_id,
        actor_api_key_id=context.actor_api_key_id,
        action=action.value,
        resource_type=resource_type,
        resource_id=str(resource_id) if resource_id is not None else None,
        ip=_normalize_ip(context.ip),
        user_agent=(context.user_agent or None) and context.user_agent[:512],
        request_id=context.request_id,
        success=success,
        details=_json_as_stored(details or {}),
        prev_hash=last.hash if last else GENESIS_HASH,
    )
    seal(row)
    session.add(row)
    await session.flush()
    head = {
        "chain": _chain_key(org_id),
        "org_id": org_id,
        "last_seq": row.seq,
        "last_hash": row.hash,
    }
    await session.execute(
        insert(AuditChainHead)
        .values(id=uuid.uuid4(), **head)
        .on_conflict_do_update(
            index_elements=[AuditChainHead.chain],
            set_={"last_seq": row.seq, "last_hash": row.hash, "updated_at": row.created_at},
        )
    )
    return row


async def verify_chain(*, session: AsyncSession, org_id: uuid.UUID | None) -> ChainVerification:
    """Walk one chain in order; report the first row whose link or content does not match."""
    expected_prev, expected_seq, checked, redacted = GENESIS_HASH, 1, 0, 0
    rows = await session.stream_scalars(
        select(AuditLog)
        .where(_chain_filter(org_id))
        .order_by(AuditLog.seq)
        .execution_options(yield_per=500)
    )
    async for row in rows:
        reason = None
        if row.seq != expected_seq:
            reason = f"sequence gap: expected {expected_seq}, found {row.seq} (a row was removed)"
        elif row.prev_hash != expected_prev:
            reason = "prev_hash does not match the previous row's hash"
        elif _row_hash(row) != row.hash:
            reason = "row does not match its hash (the row was modified)"
        elif row.content_salt is None and row.redacted_at is None:
            reason = "the row's content salt was removed without a recorded erasure"
        elif row.content_salt is not None and content_digest(row, row.content_salt) != (
            row.content_digest
        ):
            reason = "row content does not match its digest (the row was modified)"
        if reason:
            return ChainVerification(False, checked, row.id, row.seq, reason, redacted)
        checked += 1
        redacted += row.content_salt is None
        expected_prev, expected_seq = row.hash, row.seq + 1
    head = (
        await session.execute(
            select(AuditChainHead).where(AuditChainHead.chain == _chain_key(org_id))
        )
    ).scalar_one_or_none()
    last_seq = expected_seq - 1
    if head is None and checked:
        return ChainVerification(
            False, checked, None, last_seq, "the chain's head record is missing", redacted
        )
    if head is not None and (head.last_seq, head.last_hash) != (last_seq, expected_prev):
        return ChainVerification(
            False,
            checked,
            None,
            head.last_seq,
            f"the chain's head is at seq {head.last_seq} but its last row is seq {last_seq} "
            "(rows were removed from the end)",
            redacted,
        )
    return ChainVerification(True, checked, redacted_rows=redacted)


# --- reading (the API and the web UI) ------------------------------------------------------------


def _valid_action(value: str | None) -> str | None:
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


async def _record_read(
    session: AsyncSession,
    principal: Principal,
    context: AuditContext,
    action: AuditAction,
    details: dict[str, Any],
) -> None:
    if principal.org_id is None:
        return  # the instance chain is written by the privileged role only
    await record(
        session=session,
        context=context,
        action=action,
        org_id=principal.org_id,
        resource_type="audit_log",
        details=details,
    )


async def list_logs(
    *,
    session: AsyncSession,
    principal: Principal,
    context: AuditContext,
    scope: Literal["me", "org"] = "me",
    action: str | None = None,
    resource_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[AuditLog], str | None]:
    """Newest first. `scope="me"`: events the caller caused, in any organization (through an API
    key: in the key's organization only); `scope="org"` (owners and admins): every event of the
    current organization. Reading is audited."""
    if since and until and since > until:
        raise BadRequest("`from` is after `to`", code="invalid_range")
    if cursor and offset:
        raise BadRequest("use either `cursor` or `offset`, not both", code="invalid_paging")
    query = select(AuditLog)
    if scope == "org":
        if principal.org_id is None or not principal.has_role(Role.ADMIN):
            raise Forbidden("reading the organization's audit log needs the admin role")
        query = query.where(AuditLog.org_id == principal.org_id)
    else:
        query = query.where(AuditLog.actor_user_id == principal.user_id)
        if principal.kind == "api_key":  # bound to one organization, never the person's others
            query = query.where(AuditLog.org_id == principal.org_id)
    if (wanted := _valid_action(action)) is not None:
        query = query.where(AuditLog.action == wanted)
    if resource_type is not None:
        query = query.where(AuditLog.resource_type == resource_type)
    if since is not None:
        query = query.where(AuditLog.created_at >= since)
    if until is not None:
        query = query.where(AuditLog.created_at <= until)
    if cursor:
        when, ident = decode_cursor(cursor)
        query = query.where(
            or_(AuditLog.created_at < when, and_(AuditLog.created_at == when, AuditLog.id < ident))
        )
    rows = list(
        (
            await session.execute(
                query.order_by(AuditLog.created_at.desc(), AuditLog.id.desc())
                .offset(offset)
                .limit(limit + 1)
            )
        ).scalars()
    )
    page, more = rows[:limit], len(rows) > limit
    await _record_read(
        session, principal, context, AuditAction.AUDIT_READ, {"scope": scope, "returned": len(page)}
    )
    return page, (encode_cursor(page[-1].created_at, page[-1].id) if more else None)


async def verify_org_chain(
    *, session: AsyncSession, principal: Principal, context: AuditContext
) -> ChainVerification:
    """Walk the current organization's hash chain (audited)."""
    result = await verify_chain(session=session, org_id=principal.org_id)
    await _record_read(session, principal, context, AuditAction.AUDIT_VERIFY, {"ok": result.ok})
    return result
