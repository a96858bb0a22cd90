"""Privacy self-service (GDPR Art. 15, 17, 20): download everything Taskloom holds about you as
JSON or ZIP, and delete your account with the confirmation phrase and your password. When you
are the only owner of organizations that have other members, the page names them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from taskloom.errors import BadRequest, Conflict, DomainError
from taskloom.gdpr import service as gdpr
from taskloom.gdpr.schemas import ErasureRequest
from taskloom.gdpr.streaming import export_response
from taskloom.web import cookies
from taskloom.web.errors import UiRoute
from taskloom.web.forms import FieldError, text
from taskloom.web.rendering import render
from taskloom.web.session import Page, signed_in

router = APIRouter(prefix="/ui/privacy", route_class=UiRoute, include_in_schema=False)

CONFIRMATION = "DELETE"


def _render(
    page: Page,
    *,
    status: int = 200,
    errors: list[FieldError] | None = None,
    blocking: list[dict[str, Any]] | None = None,
) -> Response:
    return render(
        page,
        "privacy.html",
        status=status,
        title="Privacy",
        confirmation=CONFIRMATION,
        errors=errors or [],
        blocking=blocking or [],
    )


@router.get("")
async def privacy(request: Request) -> Response:
    async with signed_in(request) as page:
        return _render(page)


@router.post("/export")
async def export(request: Request) -> Response:
    """The same stream as GET /api/user/data-export, as a download. A form post (with its CSRF
    token), not a link: each export is recorded, audited and counted against a rate limit."""
    async with signed_in(request) as page:
        form = await page.form()
        fmt = text(form, "format")
        if fmt not in ("json", "zip"):
            raise BadRequest("choose JSON or ZIP")
        user_id = page.principal.user_id
        await gdpr.check_rate(page.runtime, kind="export", user_id=user_id)
        exported_at, body = await gdpr.start_export(
            page.runtime, user_id=user_id, context=page.audit, fmt=fmt
        )
    return export_response(
        body,
        fmt=fmt,
        exported_at=exported_at,
        send_timeout=page.runtime.settings.gdpr_export_chunk_send_timeout_seconds,
    )


@router.post("/delete")
async def delete_account(request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        try:
            body = ErasureRequest(confirm=text(form, "confirm"), password=text(form, "password"))
        except ValidationError:
            errors = []
            if text(form, "confirm") != CONFIRMATION:
                errors.append(
                    FieldError("confirm", f"type {CONFIRMATION} (in capitals) to confirm")
                )
            if not text(form, "password"):
                errors.append(FieldError("password", "enter your password"))
            return _render(page, status=422, errors=errors)
        try:
            await gdpr.erase_own_account(
                page.runtime,
                db=page.db,
                user_id=page.principal.user_id,
                password=body.password,
                context=page.audit,
            )
        except Conflict as conflict:
            organizations = (conflict.details or {}).get("organizations", [])
            return _render(
                page,
                status=conflict.status_code,
                errors=[FieldError("", conflict.message)],
                blocking=organizations,
            )
        except DomainError as refused:
            field = "password" if refused.code == "invalid_password" else ""
            return _render(
                page, status=refused.status_code, errors=[FieldError(field, refused.message)]
            )
        cookies.queue_signed_out(request)
        return render(page, "deleted.html", title="Account deleted", nav=None)
