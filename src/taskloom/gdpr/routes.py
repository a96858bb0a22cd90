"""/api/user/data-export and /api/user/account: a person's own data (GDPR Art. 15, 17, 20)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from taskloom.auth.access import access
from taskloom.auth.deps import Session, get_runtime
from taskloom.gdpr import archive, service
from taskloom.gdpr.schemas import ErasureOut, ErasureRequest, ExportStatusOut, QueuedExportOut
from taskloom.gdpr.streaming import export_response
from taskloom.locations import located, set_location

router = APIRouter(prefix="/api/user", tags=["gdpr"])


@router.get(
    "/data-export",
    response_class=StreamingResponse,
    openapi_extra=access("authenticated", api_key=False),
)
async def data_export(
    ctx: Session, fmt: Annotated[Literal["json", "zip"], Query(alias="format")] = "json"
) -> StreamingResponse:
    """Everything Taskloom holds about you, streamed: JSON, or a ZIP of one file per table.
    503 `exports_busy` (Retry-After) while this process streams as many exports as it may."""
    user_id = ctx.principal.user_id
    await service.check_rate(ctx.runtime, kind="export", user_id=user_id)
    exported_at, body = await service.start_export(
        ctx.runtime, user_id=user_id, context=ctx.audit, fmt=fmt
    )
    return export_response(
        body,
        fmt=fmt,
        exported_at=exported_at,
        send_timeout=ctx.runtime.settings.gdpr_export_chunk_send_timeout_seconds,
    )


@router.post(
    "/data-export",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=access("authenticated", api_key=False),
    responses=located(202),
)
async def queue_data_export(ctx: Session, response: Response) -> QueuedExportOut:
    """For very large accounts: a worker writes the ZIP; the link in the answer works once,
    for 24 hours, as soon as `GET /api/user/data-export/{id}` says `ready`."""
    user_id = ctx.principal.user_id
    await service.check_rate(ctx.runtime, kind="export", user_id=user_id)
    queued = await archive.queue_export(ctx.runtime, user_id=user_id, context=ctx.audit)
    set_location(response, f"/api/user/data-export/{queued.request_id}")
    return QueuedExportOut(
        request_id=queued.request_id,
        status="queued",
        download_url=f"/api/user/data-export/{queued.request_id}/download?token={queued.token}",
        expires_at=queued.expires_at,
    )


@router.get("/data-export/{request_id}", openapi_extra=access("authenticated", api_key=False))
async def queued_export_status(request_id: uuid.UUID, ctx: Session) -> ExportStatusOut:
    request = await archive.status(
        ctx.runtime, user_id=ctx.principal.user_id, request_id=request_id
    )
    return ExportStatusOut(
        request_id=request.id,
        status=request.status,
        expires_at=request.expires_at,
        downloaded=request.downloaded_at is not None,
        bytes=(request.details or {}).get("bytes"),
    )


@router.get(
    "/data-export/{request_id}/download",
    response_class=StreamingResponse,
    openapi_extra=access("public"),
)
async def download_queued_export(
    request_id: uuid.UUID,
    token: Annotated[str, Query(min_length=20, max_length=200)],
    request: Request,
) -> StreamingResponse:
    """The one-time link: no sign-in needed (the token is the credential), 410 once used."""
    runtime = get_runtime(request)
    chunks = await archive.download(runtime, request_id=request_id, token=token)
    return StreamingResponse(
        chunks,
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="taskloom-export-{request_id}.zip"',
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )


@router.delete("/account", openapi_extra=access("authenticated", api_key=False))
async def delete_account(body: ErasureRequest, ctx: Session) -> ErasureOut:
    """Erase your account. 409 lists organizations that need another owner first."""
    result = await service.erase_own_account(
        ctx.runtime,
        db=ctx.db,
        user_id=ctx.principal.user_id,
        password=body.password,
        context=ctx.audit,
    )
    return ErasureOut(
        erased=True,
        pseudonym=result.pseudonym,
        deleted_organizations=result.deleted_orgs,
        rows=result.counts,
    )
