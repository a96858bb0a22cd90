"""Webhook endpoints of an organization: create (the secret is made here and shown once),
change, rotate the secret with an overlap, delete, send a ping, list delivery attempts.

An endpoint's URL must be https in production, carry no credentials, and resolve only to
public addresses unless OUTBOUND_ALLOWED_HOSTS allows it (checked here, and again at connect
time by the delivering worker, so a DNS change cannot sneak past)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.config import Settings
from taskloom.crypto import CredentialCipher, live_secrets, rotate_sealed_secret, seal_secret
from taskloom.errors import Conflict, NotFound, ValidationFailed
from taskloom.net import AddressPolicy, TargetNotAllowed
from taskloom.pagination import decode_cursor, encode_cursor
from taskloom.webhooks.models import WebhookDelivery, WebhookEndpoint
from taskloom.webhooks.schemas import RotateSecret, WebhookCreate, WebhookUpdate
from taskloom.webhooks.signing import new_secret

MAX_PAGE = 200


def bound_to(endpoint_id: uuid.UUID, org_id: uuid.UUID) -> str:
    return f"webhook_endpoints:{org_id}:{endpoint_id}"


def _invalid_url(message: str) -> ValidationFailed:
    return ValidationFailed(
        f"body.url: {message}", details={"errors": [{"loc": ["body", "url"], "message": message}]}
    )


async def check_url(settings: Settings, url: str) -> str:
    """The URL if deliveries may go there, else ValidationFailed naming why."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise _invalid_url("not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise _invalid_url("must be an absolute https:// URL")
    if settings.is_production and parsed.scheme != "https":
        raise _invalid_url("must use https in production")
    if parsed.userinfo:
        raise _invalid_url("must not hold credentials (the signature authenticates us)")
    policy = AddressPolicy.from_setting(settings.outbound_allowed_hosts)
    try:
        await policy.resolve_allowed(parsed.host, parsed.port or 443)
    except TargetNotAllowed as refused:
        raise _invalid_url(str(refused)) from None
    except OSError:
        # Not resolvable (yet): accepted; each delivery resolves and checks again at connect
        # time, and a failure is recorded on the attempt.
        pass
    return url


async def _audit(
    db: AsyncSession,
    context: AuditContext,
    action: AuditAction,
    endpoint: WebhookEndpoint,
    details: dict[str, Any] | None = None,
) -> None:
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=endpoint.org_id,
        resource_type="webhook",
        resource_id=endpoint.id,
        details=details,
    )


def signing_secrets(cipher: CredentialCipher, endpoint: WebhookEndpoint) -> list[str]:
    """The secrets deliveries are signed with now: the current one, and the previous one while
    its overlap lasts."""
    return live_secrets(cipher, endpoint, bound_to=bound_to(endpoint.id, endpoint.org_id))


async def list_endpoints(*, db: AsyncSession, principal: Principal) -> list[WebhookEndpoint]:
    rows = await db.execute(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.org_id == principal.current_org())
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    )
    return list(rows.scalars())


async def get_endpoint(*, db: AsyncSession, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """The endpoint, or NotFound (also when it belongs to another organization)."""
    endpoint = await db.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise NotFound("webhook not found")
    return endpoint


async def _check_endpoint_allowance(db: AsyncSession, org_id: uuid.UUID, limit: int) -> None:
    """Refuse a new endpoint past WEBHOOK_MAX_ENDPOINTS_PER_ORG: every event is written once per
    subscribed endpoint, so the count multiplies what one tenant's events cost everyone. The
    transaction lock makes two concurrent creations count one after the other."""
    await db.execute(
        text(
            "select pg_advisory_xact_lock(hashtextextended('taskloom.webhook_endpoints:' || :o, 0))"
        ),
        {"o": str(org_id)},
    )
    count = await db.scalar(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id)
    )
    if (count or 0) >= limit:
        raise Conflict(
            f"this organization already has {count} webhook endpoints, the most allowed "
            "(WEBHOOK_MAX_ENDPOINTS_PER_ORG); delete one first",
            code="webhook_endpoint_limit",
        )


async def create_endpoint(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    settings: Settings,
    cipher: CredentialCipher,
    body: WebhookCreate,
) -> tuple[WebhookEndpoint, str]:
    """The new endpoint and its secret (returned this once, stored only encrypted)."""
    url = await check_url(settings, body.url)
    await _check_endpoint_allowance(
        db, principal.current_org(), settings.webhook_max_endpoints_per_org
    )
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        org_id=principal.current_org(),
        url=url,
        description=body.description,
        events=list(body.events),
        enabled=body.enabled,
        created_by=principal.user_id,
    )
    secret = new_secret()
    seal_secret(cipher, endpoint, secret, bound_to=bound_to(endpoint.id, endpoint.org_id))
    db.add(endpoint)
    await db.flush()
    await db.refresh(endpoint)
    await _audit(db, context, AuditAction.WEBHOOK_CREATE, endpoint, {"events": endpoint.events})
    return endpoint, secret


async def update_endpoint(
    *,
    db: AsyncSession,
    context: AuditContext,
    settings: Settings,
    endpoint_id: uuid.UUID,
    body: WebhookUpdate,
) -> WebhookEndpoint:
    endpoint = await get_endpoint(db=db, endpoint_id=endpoint_id)
    if body.url is not None:
        endpoint.url = await check_url(settings, body.url)
    if body.events is not None:
        endpoint.events = list(body.events)
    if "description" in body.model_fields_set:
        endpoint.description = body.description
    if body.enabled is not None:
        if body.enabled and not endpoint.enabled:
            endpoint.consecutive_failures, endpoint.disabled_reason = 0, None
        endpoint.enabled = body.enabled
    await db.flush()
    await db.refresh(endpoint)
    await _audit(
        db,
        context,
        AuditAction.WEBHOOK_UPDATE,
        endpoint,
        {"fields": sorted(body.model_fields_set)},
    )
    return endpoint


async def rotate_secret(
    *,
    db: AsyncSession,
    context: AuditContext,
    cipher: CredentialCipher,
    endpoint_id: uuid.UUID,
    body: RotateSecret,
) -> tuple[WebhookEndpoint, str]:
    """A new secret; the old one keeps signing (as a second signature) for the overlap."""
    endpoint = await get_endpoint(db=db, endpoint_id=endpoint_id)
    secret = new_secret()
    rotate_sealed_secret(
        cipher,
        endpoint,
        secret,
        bound_to=bound_to(endpoint.id, endpoint.org_id),
        overlap_seconds=body.overlap_seconds,
    )
    await db.flush()
    await db.refresh(endpoint)
    await _audit(
        db,
        context,
        AuditAction.WEBHOOK_ROTATE_SECRET,
        endpoint,
        {"overlap_seconds": body.overlap_seconds},
    )
    return endpoint, secret


async def delete_endpoint(
    *, db: AsyncSession, context: AuditContext, endpoint_id: uuid.UUID
) -> None:
    endpoint = await get_endpoint(db=db, endpoint_id=endpoint_id)
    await _audit(db, context, AuditAction.WEBHOOK_DELETE, endpoint, {"url_host": _host(endpoint)})
    await db.delete(endpoint)
    await db.flush()


def _host(endpoint: WebhookEndpoint) -> str:
    return httpx.URL(endpoint.url).host


async def send_ping(
    *, db: AsyncSession, context: AuditContext, endpoint_id: uuid.UUID
) -> WebhookDelivery:
    """Queue a `ping` to this endpoint (whatever its subscriptions); workers deliver it."""
    endpoint = await get_endpoint(db=db, endpoint_id=endpoint_id)
    event_id = uuid.uuid4()
    delivery = WebhookDelivery(
        id=uuid.uuid4(),
        org_id=endpoint.org_id,
        endpoint_id=endpoint.id,
        event_id=event_id,
        event_type="ping",
        attempt=1,
        status="pending",
        request_id=context.request_id,
        payload={
            "id": str(event_id),
            "type": "ping",
            "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "data": {"webhook_id": str(endpoint.id)},
        },
    )
    db.add(delivery)
    await db.flush()
    await _audit(db, context, AuditAction.WEBHOOK_TEST, endpoint, {"event_id": str(event_id)})
    return delivery


async def list_deliveries(
    *, db: AsyncSession, endpoint_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[WebhookDelivery], str | None]:
    """Attempts, newest first, with a keyset cursor for the next page."""
    await get_endpoint(db=db, endpoint_id=endpoint_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if cursor:
        created, last_id = decode_cursor(cursor)
        query = query.where(
            (WebhookDelivery.created_at < created)
            | ((WebhookDelivery.created_at == created) & (WebhookDelivery.id < last_id))
        )
    limit = min(max(limit, 1), MAX_PAGE)
    rows = list(
        (
            await db.execute(
                query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(
                    limit + 1
                )
            )
        ).scalars()
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, next_cursor
