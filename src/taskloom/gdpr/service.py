"""GDPR requests as the API and the CLI make them: rate limits, the request record, the audit
event, and what must happen outside the database after an erasure (Redis, queued jobs)."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

import structlog
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth import ratelimit, revocation
from taskloom.auth.models import User
from taskloom.db.tenancy import system_transaction
from taskloom.errors import Busy, Unauthorized
from taskloom.executions.queue import ExecutionQueue
from taskloom.gdpr import archive, export
from taskloom.gdpr.erasure import Erasure, erase
from taskloom.gdpr.models import GdprRequest
from taskloom.redis import purge_matching
from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.gdpr")
HOUR = 3_600


async def check_rate(runtime: Runtime, *, kind: str, user_id: uuid.UUID) -> None:
    limit = (
        runtime.settings.gdpr_export_max_per_hour
        if kind == "export"
        else runtime.settings.gdpr_erasure_max_per_hour
    )
    await ratelimit.consume(
        redis=runtime.redis,
        key=runtime.keys("ratelimit", "gdpr", kind, str(user_id)),
        limit=limit,
        window_seconds=HOUR,
        what=f"data {kind}",
    )


async def start_export(
    runtime: Runtime,
    *,
    user_id: uuid.UUID,
    context: AuditContext,
    fmt: str,
    on_row: export.OnRow = export.ignore_row,
) -> tuple[datetime, AsyncGenerator[bytes, None]]:
    """Open the export's snapshot (Busy when every export connection is taken), record the
    request (audited in the instance chain: an export is personal, not an organization's
    business) and return the stream of the document, which holds the connection until it ends
    or is closed."""
    exported_at = datetime.now(UTC)
    write = export.zip_archive if fmt == "zip" else export.json_document
    document = write(runtime.database, user_id, exported_at, on_row)
    try:
        await anext(document)  # the (empty) first chunk: the snapshot is open
    except PoolTimeout as full:
        raise Busy(
            "every data-export connection is in use; retry shortly",
            code="exports_busy",
            retry_after=math.ceil(runtime.settings.gdpr_export_chunk_send_timeout_seconds),
        ) from full
    try:
        await _record_export(runtime, user_id=user_id, context=context, fmt=fmt, at=exported_at)
    except BaseException:
        await document.aclose()
        raise
    return exported_at, document


async def _record_export(
    runtime: Runtime, *, user_id: uuid.UUID, context: AuditContext, fmt: str, at: datetime
) -> None:
    async with system_transaction(runtime.database) as db:
        db.add(
            GdprRequest(
                user_id=user_id,
                requested_by=context.actor_user_id,
                kind="export",
                status="completed",
                details={"format": fmt},
                completed_at=at,
            )
        )
        await audit.record(
            session=db,
            context=context,
            action=AuditAction.GDPR_EXPORT,
            org_id=None,
            resource_type="user",
            resource_id=user_id,
            details={"format": fmt},
        )


async def user_id_for(runtime: Runtime, email: str) -> uuid.UUID | None:
    """The account with this email (operators act by email; emails are stored lowercased)."""
    async with system_transaction(runtime.database) as db:
        found = await db.scalar(select(User.id).where(User.email == email.strip().lower()))
    return found


async def erase_own_account(
    runtime: Runtime, *, db: AsyncSession, user_id: uuid.UUID, password: str, context: AuditContext
) -> Erasure:
    """A person erasing their own account (the API and the web UI): rate-limited, and only with
    their password; Conflict names the organizations that need another owner first."""
    await check_rate(runtime, kind="erasure", user_id=user_id)
    password_hash = await db.scalar(select(User.password_hash).where(User.id == user_id))
    if not await asyncio.to_thread(runtime.passwords.verify, password_hash, password):
        raise Unauthorized("the password is not correct", code="invalid_password")
    return await erase_account(runtime, user_id=user_id, context=context)


async def erase_account(runtime: Runtime, *, user_id: uuid.UUID, context: AuditContext) -> Erasure:
    """Erase in one transaction, then clean Redis and the queues (the jobs of their cancelled
    executions, of the other executions `Erasure.leftover_jobs` names, and of their exports).
    Redis trouble afterwards is logged, not raised: the erasure stands, and the keys and jobs
    expire on their own."""
    async with system_transaction(runtime.database) as db:
        result = await erase(db, settings=runtime.settings, user_id=user_id, context=context)
    await revocation.publish(runtime, {user_id})  # their cached sessions and keys, everywhere
    try:
        keys = runtime.keys
        await runtime.redis.delete(
            ratelimit.account_key(settings=runtime.settings, keys=keys, email=result.email)
        )
        removed = await purge_matching(runtime.redis, keys("cache", "*", f"user:{user_id}", "*"))
        removed += await purge_matching(runtime.redis, keys("ratelimit", "gdpr", "*", str(user_id)))
        executions = ExecutionQueue(runtime)
        for org_id, execution_id in [*result.cancelled_executions, *result.leftover_jobs]:
            # The job, and the execution's place in its organization's ready list or slots.
            await executions.withdraw(execution_id=execution_id, org_id=org_id)
        for request_id in result.export_requests:
            await runtime.queues[archive.EXPORT_QUEUE_NAME].remove(str(request_id))
        log.info("user_erased", pseudonym=result.pseudonym, redis_keys=removed)
    except (RedisError, OSError):
        log.exception("erasure_redis_cleanup_failed", pseudonym=result.pseudonym)
    return result
