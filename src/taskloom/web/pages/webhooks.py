"""Outgoing webhooks of the current organization (admins): create (the secret is shown once),
enable or disable, send a test ping, rotate the secret, delete, and every delivery attempt."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from taskloom.errors import DomainError
from taskloom.orgs.models import Role
from taskloom.web.errors import UiRoute
from taskloom.web.forms import FieldError, from_domain, from_validation, optional_text, text
from taskloom.web.rendering import redirect, render, with_query
from taskloom.web.session import Page, signed_in
from taskloom.webhooks import service
from taskloom.webhooks.models import WebhookEndpoint
from taskloom.webhooks.schemas import EVENT_TYPES, RotateSecret, WebhookCreate, WebhookUpdate

router = APIRouter(prefix="/ui/admin/webhooks", route_class=UiRoute, include_in_schema=False)

DELIVERIES_PER_PAGE = 50


async def _list(
    page: Page,
    *,
    status: int = 200,
    errors: list[FieldError] | None = None,
    values: dict[str, object] | None = None,
    created: tuple[WebhookEndpoint, str] | None = None,
) -> Response:
    endpoints = await service.list_endpoints(db=page.db, principal=page.principal)
    return render(
        page,
        "admin/webhooks.html",
        status=status,
        title="Webhooks",
        endpoints=endpoints,
        event_types=EVENT_TYPES,
        errors=errors or [],
        values=values or {"url": "", "description": "", "events": []},
        created=created,
    )


@router.get("")
async def webhooks(request: Request) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.ADMIN)
        return await _list(page)


@router.post("")
async def create_webhook(request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.ADMIN)
        events = [e for e in form.getlist("events") if isinstance(e, str)]
        values: dict[str, object] = {
            "url": text(form, "url").strip(),
            "description": text(form, "description"),
            "events": events,
        }
        try:
            body = WebhookCreate.model_validate(
                {
                    "url": values["url"],
                    "events": events,
                    "description": optional_text(form, "description"),
                }
            )
            async with page.db.begin_nested():
                endpoint, secret = await service.create_endpoint(
                    db=page.db,
                    principal=page.principal,
                    context=page.audit,
                    settings=page.runtime.settings,
                    cipher=page.runtime.cipher,
                    body=body,
                )
        except ValidationError as invalid:
            return await _list(page, status=422, errors=from_validation(invalid), values=values)
        except DomainError as refused:
            errors = from_domain(refused)
            return await _list(page, status=refused.status_code, errors=errors, values=values)
        # Rendered, not redirected: the secret is shown this once.
        return await _list(page, status=201, created=(endpoint, secret))


async def _detail(
    page: Page,
    endpoint: WebhookEndpoint,
    *,
    cursor: str | None = None,
    secret: str | None = None,
    errors: list[FieldError] | None = None,
    status: int = 200,
) -> Response:
    deliveries, next_cursor = await service.list_deliveries(
        db=page.db, endpoint_id=endpoint.id, limit=DELIVERIES_PER_PAGE, cursor=cursor
    )
    next_url = with_query(page.request, cursor=next_cursor) if next_cursor else None
    return render(
        page,
        "admin/webhook.html",
        status=status,
        title=f"Webhook {endpoint.url}",
        endpoint=endpoint,
        deliveries=deliveries,
        next_url=next_url,
        secret=secret,
        errors=errors or [],
    )


@router.get("/{webhook_id}")
async def show_webhook(
    webhook_id: uuid.UUID,
    request: Request,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.ADMIN)
        endpoint = await service.get_endpoint(db=page.db, endpoint_id=webhook_id)
        return await _detail(page, endpoint, cursor=cursor)


@router.post("/{webhook_id}/enabled")
async def set_enabled(webhook_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.ADMIN)
        await service.update_endpoint(
            db=page.db,
            context=page.audit,
            settings=page.runtime.settings,
            endpoint_id=webhook_id,
            body=WebhookUpdate(enabled=text(form, "enabled") == "true"),
        )
    return redirect(f"/ui/admin/webhooks/{webhook_id}?notice=webhook-updated")


@router.post("/{webhook_id}/test")
async def send_ping(webhook_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.ADMIN)
        await service.send_ping(db=page.db, context=page.audit, endpoint_id=webhook_id)
    return redirect(f"/ui/admin/webhooks/{webhook_id}?notice=webhook-pinged")


@router.post("/{webhook_id}/rotate-secret")
async def rotate_secret(webhook_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.ADMIN)
        endpoint = await service.get_endpoint(db=page.db, endpoint_id=webhook_id)
        try:
            body = RotateSecret.model_validate(
                {"overlap_seconds": int(text(form, "overlap_hours") or 24) * 3600}
            )
        except (ValueError, ValidationError):
            errors = [FieldError("overlap_hours", "a whole number of hours from 0 to 168")]
            return await _detail(page, endpoint, errors=errors, status=422)
        endpoint, secret = await service.rotate_secret(
            db=page.db,
            context=page.audit,
            cipher=page.runtime.cipher,
            endpoint_id=webhook_id,
            body=body,
        )
        return await _detail(page, endpoint, secret=secret)


@router.post("/{webhook_id}/delete")
async def delete_webhook(webhook_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.ADMIN)
        await service.delete_endpoint(db=page.db, context=page.audit, endpoint_id=webhook_id)
    return redirect("/ui/admin/webhooks?notice=webhook-deleted")
