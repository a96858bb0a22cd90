"""/api/user/data-export and /api/user/account: a person's own data (GDPR Art. 15, 17, 20)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from taskloom.auth.deps import Context
from taskloom.auth.models import User
from taskloom.errors import Unauthorized
from taskloom.gdpr import service
from taskloom.gdpr.schemas import ErasureOut, ErasureRequest

router = APIRouter(prefix="/api/user", tags=["gdpr"])


@router.get("/data-export", response_class=StreamingResponse)
async def data_export(
    ctx: Context, fmt: Annotated[Literal["json", "zip"], Query(alias="format")] = "json"
) -> StreamingResponse:
    """Everything Taskloom holds about you, streamed: JSON, or a ZIP of one file per table."""
    user_id = ctx.principal.user_id
    await service.check_rate(ctx.runtime, kind="export", user_id=user_id)
    exported_at, body = await service.start_export(
        ctx.runtime, user_id=user_id, context=ctx.audit, fmt=fmt
    )
    stamp = exported_at.strftime("%Y%m%dT%H%M%SZ")
    media = "application/zip" if fmt == "zip" else "application/json"
    return StreamingResponse(
        body,
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="taskloom-export-{stamp}.{fmt}"',
            "Cache-Control": "no-store",
        },
    )


@router.delete("/account")
async def delete_account(body: ErasureRequest, ctx: Context) -> ErasureOut:
    """Erase your account. 409 lists organizations that need another owner first."""
    user_id = ctx.principal.user_id
    await service.check_rate(ctx.runtime, kind="erasure", user_id=user_id)
    password_hash = await ctx.db.scalar(select(User.password_hash).where(User.id == user_id))
    if not ctx.runtime.passwords.verify(password_hash, body.password):
        raise Unauthorized("the password is not correct", code="invalid_password")
    result = await service.erase_account(ctx.runtime, user_id=user_id, context=ctx.audit)
    return ErasureOut(
        erased=True,
        pseudonym=result.pseudonym,
        deleted_organizations=result.deleted_orgs,
        rows=result.counts,
    )
