"""Queued exports for accounts too large to stream in one request: the request is recorded with
a one-time download link, a worker writes the ZIP into `gdpr_export_files` in 1 MiB chunks, and
the link works once, until it expires (24 h). Everything here runs on the privileged role: the
application role has no privilege on the archive table."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from bullmq import Job
from sqlalchemy import delete, select, update

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.config import Settings
from taskloom.db.tenancy import system_transaction
from taskloom.errors import Conflict, Gone, NotFound
from taskloom.gdpr import export
from taskloom.gdpr.models import GdprExportFile, GdprRequest
from taskloom.observability import tracing
from taskloom.queue.host import JobType, Upkeep
from taskloom.queue.jobs import QueueSpec
from taskloom.queue.outage import put_back_on_database_outage
from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.gdpr")

EXPORT_QUEUE_NAME = "gdpr"
LINK_TTL = timedelta(hours=24)
CHUNK_BYTES = 1_048_576


@dataclass(frozen=True)
class QueuedExport:
    request_id: uuid.UUID
    token: str  # shown once; only its hash is stored
    expires_at: datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def queue_export(
    runtime: Runtime, *, user_id: uuid.UUID, context: AuditContext
) -> QueuedExport:
    """Record the request and its link; the caller enqueues the job after this commits."""
    token = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + LINK_TTL
    async with system_transaction(runtime.database) as db:
        request = GdprRequest(
            user_id=user_id,
            requested_by=context.actor_user_id,
            kind="export",
            status="queued",
            details={"format": "zip", "queued": True},
            download_token_hash=_hash(token),
            expires_at=expires_at,
        )
        db.add(request)
        await db.flush()
        await audit.record(
            session=db,
            context=context,
            action=AuditAction.GDPR_EXPORT,
            org_id=None,
            resource_type="gdpr_request",
            resource_id=request.id,
            details={"format": "zip", "queued": True},
        )
    await runtime.queues[EXPORT_QUEUE_NAME].add(
        {"request_id": str(request.id)}, job_id=str(request.id)
    )
    return QueuedExport(request_id=request.id, token=token, expires_at=expires_at)


async def status(runtime: Runtime, *, user_id: uuid.UUID, request_id: uuid.UUID) -> GdprRequest:
    async with system_transaction(runtime.database) as db:
        request = await db.get(GdprRequest, request_id)
    if request is None or request.user_id != user_id or request.kind != "export":
        raise NotFound("export not found")
    return request


async def build(runtime: Runtime, request_id: uuid.UUID) -> None:
    """The worker's job: write the archive (again from scratch if a previous run died)."""
    async with system_transaction(runtime.database) as db:
        request = await db.get(GdprRequest, request_id)
        if (
            request is None
            or request.user_id is None
            or request.status not in ("queued", "running")
        ):
            return
        user_id = request.user_id
        request.status = "running"
        await db.execute(delete(GdprExportFile).where(GdprExportFile.request_id == request_id))
    seq, size, pending = 0, 0, bytearray()
    archive = export.zip_archive(runtime.database, user_id, datetime.now(UTC))
    async for chunk in archive:
        pending += chunk
        size += len(chunk)
        while len(pending) >= CHUNK_BYTES:
            await _store(runtime, request_id, seq, bytes(pending[:CHUNK_BYTES]))
            del pending[:CHUNK_BYTES]
            seq += 1
    if pending:
        await _store(runtime, request_id, seq, bytes(pending))
        seq += 1
    async with system_transaction(runtime.database) as db:
        await db.execute(
            update(GdprRequest)
            .where(GdprRequest.id == request_id)
            .values(
                status="ready",
                completed_at=datetime.now(UTC),
                details={"format": "zip", "queued": True, "bytes": size, "chunks": seq},
            )
        )
    log.info("export_ready", request_id=str(request_id), bytes=size)


async def _store(runtime: Runtime, request_id: uuid.UUID, seq: int, data: bytes) -> None:
    async with system_transaction(runtime.database) as db:
        db.add(GdprExportFile(request_id=request_id, seq=seq, data=data))


async def download(runtime: Runtime, *, request_id: uuid.UUID, token: str) -> AsyncIterator[bytes]:
    """Claim the link (once) and return the archive's chunks; they are deleted once sent."""
    async with system_transaction(runtime.database) as db:
        request = await db.get(GdprRequest, request_id, with_for_update=True)
        if (
            request is None
            or request.user_id is None  # the person was erased (which deletes the request too)
            or request.download_token_hash is None
            or not hmac.compare_digest(request.download_token_hash, _hash(token))
        ):
            raise NotFound("no such download")  # same answer for a wrong token: no oracle
        if request.downloaded_at is not None:
            raise Gone("this download link was already used", code="link_used")
        if request.expires_at is not None and request.expires_at <= datetime.now(UTC):
            raise Gone("this download link has expired", code="link_expired")
        if request.status != "ready":
            raise Conflict(f"the export is not ready yet ({request.status})", code="not_ready")
        request.downloaded_at = datetime.now(UTC)
    return _chunks(runtime, request_id)


async def _chunks(runtime: Runtime, request_id: uuid.UUID) -> AsyncIterator[bytes]:
    seq = 0
    while True:
        async with system_transaction(runtime.database) as db:
            data = await db.scalar(
                select(GdprExportFile.data).where(
                    GdprExportFile.request_id == request_id, GdprExportFile.seq == seq
                )
            )
        if data is None:
            break
        yield data
        seq += 1
    async with system_transaction(runtime.database) as db:
        await db.execute(delete(GdprExportFile).where(GdprExportFile.request_id == request_id))


async def purge_expired(runtime: Runtime) -> int:
    """Drop archives whose link expired or was used (the upkeep below, on the leader)."""
    async with system_transaction(runtime.database) as db:
        stale = select(GdprRequest.id).where(
            (GdprRequest.expires_at <= datetime.now(UTC)) | GdprRequest.downloaded_at.is_not(None)
        )
        result = await db.execute(
            delete(GdprExportFile).where(GdprExportFile.request_id.in_(stale))
        )
    return int(getattr(result, "rowcount", 0) or 0)


class ExportBuilder:
    """The processor of the `gdpr` queue: one job per queued export (job id = the request's
    id), built by `build`; put back while PostgreSQL is unreachable."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def process(self, job: Job, token: str) -> None:
        with tracing.job_span(EXPORT_QUEUE_NAME, job.id):
            async with put_back_on_database_outage(job, token, queue=EXPORT_QUEUE_NAME):
                await build(self.runtime, uuid.UUID(job.data["request_id"]))


async def _purge(runtime: Runtime) -> None:
    if purged := await purge_expired(runtime):
        log.info("expired_exports_purged", chunks=purged)


def _retries(settings: Settings) -> dict[str, Any]:
    return {"attempts": 3, "backoff": {"type": "exponential", "delay": 5_000}}


def _worker_options(settings: Settings) -> dict[str, Any]:
    return {
        "concurrency": 1,
        "lockDuration": settings.queue_lock_duration_ms,
        "stalledInterval": settings.queue_stalled_interval_ms,
    }


QUEUE = QueueSpec(
    name=EXPORT_QUEUE_NAME, job_name="export", purpose="producer-gdpr", retries=_retries
)
JOB_TYPE = JobType(
    queue=QUEUE,
    processor=ExportBuilder,
    worker_purpose="worker-gdpr",
    worker_options=_worker_options,
    name_suffix=":gdpr",
)
EXPORT_PURGE = Upkeep(name="expired_exports", run=_purge)
