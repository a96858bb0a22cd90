"""/api/webhooks: an organization's outgoing webhooks (admins). The secret is in the responses
to creation and rotation only."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from taskloom.auth.access import access
from taskloom.auth.deps import Admin
from taskloom.locations import located, set_location
from taskloom.webhooks import service
from taskloom.webhooks.models import WebhookEndpoint
from taskloom.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    PingAccepted,
    RotateSecret,
    WebhookCreate,
    WebhookOut,
    WebhookUpdate,
    WebhookWithSecret,
)

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


def _out(endpoint: WebhookEndpoint) -> WebhookOut:
    return WebhookOut.model_validate(endpoint, from_attributes=True)


def _with_secret(endpoint: WebhookEndpoint, secret: str) -> WebhookWithSecret:
    return WebhookWithSecret(**_out(endpoint).model_dump(), secret=secret)


@router.get("", openapi_extra=access("admin"))
async def list_webhooks(ctx: Admin) -> list[WebhookOut]:
    return [_out(e) for e in await service.list_endpoints(db=ctx.db, principal=ctx.principal)]


@router.post(
    "", status_code=status.HTTP_201_CREATED, openapi_extra=access("admin"), responses=located(201)
)
async def create_webhook(body: WebhookCreate, ctx: Admin, response: Response) -> WebhookWithSecret:
    endpoint, secret = await service.create_endpoint(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        settings=ctx.runtime.settings,
        cipher=ctx.runtime.cipher,
        body=body,
    )
    set_location(response, f"/api/webhooks/{endpoint.id}")
    return _with_secret(endpoint, secret)


@router.get("/{webhook_id}", openapi_extra=access("admin"))
async def get_webhook(webhook_id: uuid.UUID, ctx: Admin) -> WebhookOut:
    return _out(await service.get_endpoint(db=ctx.db, endpoint_id=webhook_id))


@router.patch("/{webhook_id}", openapi_extra=access("admin"))
async def update_webhook(webhook_id: uuid.UUID, body: WebhookUpdate, ctx: Admin) -> WebhookOut:
    endpoint = await service.update_endpoint(
        db=ctx.db,
        context=ctx.audit,
        settings=ctx.runtime.settings,
        endpoint_id=webhook_id,
        body=body,
    )
    return _out(endpoint)


@router.delete(
    "/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=access("admin")
)
async def delete_webhook(webhook_id: uuid.UUID, ctx: Admin) -> Response:
    await service.delete_endpoint(db=ctx.db, context=ctx.audit, endpoint_id=webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{webhook_id}/rotate-secret", openapi_extra=access("admin"))
async def rotate_secret(webhook_id: uuid.UUID, body: RotateSecret, ctx: Admin) -> WebhookWithSecret:
    endpoint, secret = await service.rotate_secret(
        db=ctx.db, context=ctx.audit, cipher=ctx.runtime.cipher, endpoint_id=webhook_id, body=body
    )
    return _with_secret(endpoint, secret)


@router.post(
    "/{webhook_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=access("admin"),
    responses=located(202),
)
async def test_webhook(webhook_id: uuid.UUID, ctx: Admin, response: Response) -> PingAccepted:
    """Queue a `ping`; its attempts appear under /deliveries."""
    delivery = await service.send_ping(db=ctx.db, context=ctx.audit, endpoint_id=webhook_id)
    set_location(response, f"/api/webhooks/{webhook_id}/deliveries")
    return PingAccepted(event_id=delivery.event_id, delivery_id=delivery.id)


@router.get("/{webhook_id}/deliveries", openapi_extra=access("admin"))
async def list_deliveries(
    webhook_id: uuid.UUID,
    ctx: Admin,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DeliveryPage:
    rows, next_cursor = await service.list_deliveries(
        db=ctx.db, endpoint_id=webhook_id, limit=limit, cursor=cursor
    )
    items = [DeliveryOut.model_validate(r, from_attributes=True) for r in rows]
    return DeliveryPage(items=items, next_cursor=next_cursor)
