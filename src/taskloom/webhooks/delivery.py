"""Delivering webhooks, in workers.

`dispatch_pending` moves `pending` rows of the outbox (written by the database triggers, or by
a ping) to the `webhooks` queue: the job is added first, then the row marked `queued`, in the
transaction that locked it, so a Redis failure leaves it pending for the next tick and a second
dispatcher skips it (SKIP LOCKED); the job id is the row id, so adding twice is harmless.

`WebhookDeliverer.process` makes one attempt: sign the stored event, POST it through the
outbound address guard (redirects not followed, the whole attempt within
WEBHOOK_TIMEOUT_SECONDS, at most 64 KiB of the answer read), record the attempt (the first
attempt's row is updated, later attempts get rows of their own), and raise on failure so BullMQ
retries with exponential backoff. After WEBHOOK_DISABLE_AFTER_FAILURES failed attempts in a row
an endpoint is disabled and the audit log says so.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from bullmq import Job
from sqlalchemy import text

from taskloom import __version__
from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.config import Settings
from taskloom.crypto import CredentialKeyError
from taskloom.db.tenancy import system_transaction, tenant_transaction
from taskloom.net import TargetNotAllowed
from taskloom.observability import tracing
from taskloom.observability.request_id import bound_request_id
from taskloom.outbound import send_bounded
from taskloom.outbound_pool import PoolKey, fingerprint
from taskloom.queue.host import JobType, Upkeep
from taskloom.queue.jobs import QueueSpec
from taskloom.queue.outage import put_back_on_database_outage
from taskloom.runtime import Runtime
from taskloom.webhooks.models import WebhookDelivery, WebhookEndpoint
from taskloom.webhooks.service import signing_secrets
from taskloom.webhooks.signing import signature_header

log = structlog.get_logger("taskloom.webhooks")

WEBHOOK_QUEUE_NAME = "webhooks"
DISPATCH_BATCH = 500
WEBHOOK_CONCURRENCY = 10  # deliveries in flight per worker process (mostly waiting on I/O)
LOST_BATCH = 500
MAX_RESPONSE_BYTES = 64 * 1024  # of a receiver's answer: only its status matters
_SYSTEM = AuditContext(user_agent="taskloom-worker")


class DeliveryFailed(Exception):
    """This attempt failed; BullMQ retries while attempts remain."""


# Organizations with pending rows, found by a loose index scan of ix_webhook_deliveries_pending
# (one index probe per organization, however many rows one of them wrote); for each, its oldest
# pending rows up to what its queued rows leave of the per-organization allowance.
_DISPATCHABLE = text(
    """
    with recursive orgs(org_id) as (
        (select org_id from webhook_deliveries where status = 'pending' order by org_id limit 1)
        union all
        select (
            select d.org_id from webhook_deliveries d
            where d.status = 'pending' and d.org_id > orgs.org_id
            order by d.org_id limit 1
        )
        from orgs where orgs.org_id is not null
    )
    select picked.id, picked.org_id
    from orgs
    cross join lateral (
        select count(*) as queued from webhook_deliveries q
        where q.org_id = orgs.org_id and q.status = 'queued'
    ) inflight
    cross join lateral (
        select d.id, d.org_id, d.created_at from webhook_deliveries d
        where d.org_id = orgs.org_id and d.status = 'pending'
        order by d.created_at
        limit greatest(least(:per_org - inflight.queued, :n), 0)
        for update skip locked
    ) picked
    where orgs.org_id is not null
    order by picked.created_at
    limit :n
    """
)


async def dispatch_pending(runtime: Runtime) -> int:
    """Enqueue up to DISPATCH_BATCH pending deliveries (all organizations; privileged role), no
    organization having more than WEBHOOK_MAX_QUEUED_PER_ORG in the queue at once: one
    organization's flood of events (or of slow endpoints) waits in its own outbox rows instead
    of filling the delivery slots every organization shares."""
    per_org = runtime.settings.webhook_max_queued_per_org
    async with system_transaction(runtime.database) as db:
        # The planner cannot see the per-organization limits and would JIT-compile a plan it
        # thinks returns millions of rows (5-100 ms of CPU a tick, for a few ms of work).
        await db.execute(text("set local jit = off"))
        rows = (await db.execute(_DISPATCHABLE, {"n": DISPATCH_BATCH, "per_org": per_org})).all()
        for delivery_id, org_id in rows:
            await enqueue(runtime, delivery_id=delivery_id, org_id=org_id)
        if rows:
            await db.execute(
                text("update webhook_deliveries set status = 'queued' where id = any(:ids)"),
                {"ids": [row[0] for row in rows]},
            )
    return len(rows)


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    response_code: int | None
    duration_ms: int
    error: str | None


def _body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class WebhookDeliverer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def process(self, job: Job, token: str) -> Any:
        with tracing.job_span(WEBHOOK_QUEUE_NAME, job.id):
            async with put_back_on_database_outage(job, token, queue=WEBHOOK_QUEUE_NAME):
                return await self._deliver(job)

    async def _deliver(self, job: Job) -> Any:
        delivery_id, org_id = uuid.UUID(job.data["delivery_id"]), uuid.UUID(job.data["org_id"])
        attempt = job.attemptsMade + 1
        async with tenant_transaction(self.runtime.database, org_id=org_id, user_id=None) as db:
            first = await db.get(WebhookDelivery, delivery_id)
            endpoint = None if first is None else await db.get(WebhookEndpoint, first.endpoint_id)
            if first is None or endpoint is None:
                return {"skipped": "deleted"}
            if attempt == 1 and first.status not in ("pending", "queued"):
                return {"skipped": "already attempted"}  # a duplicate job of a done delivery
            if not endpoint.enabled:
                await self._record(
                    db, first, attempt, _Outcome(False, None, 0, "endpoint disabled")
                )
                return {"skipped": "disabled"}
            try:
                secrets = signing_secrets(self.runtime.cipher, endpoint)
            except CredentialKeyError as error:
                await self._record(db, first, attempt, _Outcome(False, None, 0, str(error)))
                return {"skipped": "secret undecryptable"}
            url, payload = endpoint.url, dict(first.payload or {})
            event_type, event_id, request_id = first.event_type, first.event_id, first.request_id
            # The endpoint's pooled client: never another organization's, nor another URL's.
            pool_key = PoolKey(
                org=str(org_id),
                kind="webhook",
                owner=str(endpoint.id),
                fingerprint=fingerprint(url),
                flavor="httpx",
                policy=self.runtime.settings.outbound_allowed_hosts,
            )
        with bound_request_id(request_id):
            outcome = await self._send(
                pool_key, url, payload, secrets, event_type, event_id, request_id
            )
        async with tenant_transaction(self.runtime.database, org_id=org_id, user_id=None) as db:
            first = await db.get(WebhookDelivery, delivery_id)
            endpoint = (
                await db.get(WebhookEndpoint, first.endpoint_id, with_for_update=True)
                if (first is not None)
                else None
            )
            if first is None or endpoint is None:
                return {"skipped": "deleted"}
            await self._record(db, first, attempt, outcome)
            await self._count(db, endpoint, outcome)
        log.info(
            "webhook_attempt",
            event_type=event_type,
            attempt=attempt,
            ok=outcome.ok,
            response_code=outcome.response_code,
            duration_ms=outcome.duration_ms,
        )
        if not outcome.ok:
            raise DeliveryFailed(outcome.error or "delivery failed")
        return {"delivered": True, "attempt": attempt}

    async def _send(
        self,
        pool_key: PoolKey,
        url: str,
        payload: dict[str, Any],
        secrets: list[str],
        event_type: str,
        event_id: uuid.UUID,
        request_id: str | None,
    ) -> _Outcome:
        settings = self.runtime.settings
        body = _body(payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"Taskloom-Webhooks/{__version__}",
            "Taskloom-Event": event_type,
            "Taskloom-Delivery": str(event_id),
            "Taskloom-Signature": signature_header(secrets, int(time.time()), body),
        }
        if request_id:
            headers["X-Request-ID"] = request_id
        timeout = settings.webhook_timeout_seconds
        started = time.perf_counter()
        try:
            async with (
                self.runtime.outbound.transport(pool_key) as transport,
                httpx.AsyncClient(
                    transport=transport,
                    timeout=timeout,
                    follow_redirects=False,  # a redirect could lead the signed body anywhere
                    trust_env=False,
                ) as client,
            ):
                request = client.build_request("POST", url, content=body, headers=headers)
                # The whole attempt, not each read, is bounded; the body is only drained.
                response = await send_bounded(
                    client,
                    request,
                    deadline_seconds=timeout,
                    max_bytes=MAX_RESPONSE_BYTES,
                    truncate=True,
                    decode=False,  # never inflated: a gzip bomb costs nothing
                )
        except TargetNotAllowed as refused:
            return _Outcome(False, None, _ms(started), str(refused))
        except (TimeoutError, httpx.TimeoutException):
            return _Outcome(False, None, _ms(started), f"no answer within {timeout:g} s")
        except httpx.HTTPError as error:
            return _Outcome(
                False, None, _ms(started), f"connection failed ({type(error).__name__})"
            )
        status = response.status_code
        ok = 200 <= status <= 299
        return _Outcome(ok, status, _ms(started), None if ok else f"HTTP {status}")

    @staticmethod
    async def _record(db: Any, first: WebhookDelivery, attempt: int, outcome: _Outcome) -> None:
        status = "succeeded" if outcome.ok else "failed"
        fields = {
            "status": status,
            "response_code": outcome.response_code,
            "duration_ms": outcome.duration_ms,
            "error": outcome.error,
        }
        if attempt == 1 or first.attempt == attempt:
            for name, value in fields.items():
                setattr(first, name, value)
        else:
            db.add(
                WebhookDelivery(
                    id=uuid.uuid4(),
                    org_id=first.org_id,
                    endpoint_id=first.endpoint_id,
                    event_id=first.event_id,
                    event_type=first.event_type,
                    attempt=attempt,
                    request_id=first.request_id,
                    **fields,
                )
            )
        await db.flush()

    async def _count(self, db: Any, endpoint: WebhookEndpoint, outcome: _Outcome) -> None:
        """Track failures in a row; disable the endpoint (audited) at the threshold."""
        if outcome.ok:
            endpoint.consecutive_failures = 0
            return
        endpoint.consecutive_failures += 1
        threshold = self.runtime.settings.webhook_disable_after_failures
        if endpoint.enabled and endpoint.consecutive_failures >= threshold:
            endpoint.enabled = False
            endpoint.disabled_reason = (
                f"disabled after {endpoint.consecutive_failures} failed deliveries in a row "
                f"(last: {outcome.error})"
            )
            await audit.record(
                session=db,
                context=_SYSTEM,
                action=AuditAction.WEBHOOK_DISABLED,
                org_id=endpoint.org_id,
                resource_type="webhook",
                resource_id=endpoint.id,
                success=False,
                details={"consecutive_failures": endpoint.consecutive_failures},
            )
            log.warning("webhook_disabled", endpoint_id=str(endpoint.id))
        await db.flush()


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


async def enqueue(runtime: Runtime, *, delivery_id: uuid.UUID, org_id: uuid.UUID) -> None:
    """Add the delivery's job (a no-op while one with its id exists)."""
    await runtime.queues[WEBHOOK_QUEUE_NAME].add(
        {"delivery_id": str(delivery_id), "org_id": str(org_id)}, job_id=str(delivery_id)
    )


async def requeue_lost_deliveries(runtime: Runtime) -> int:
    """Webhook deliveries handed to the queue (`queued`) longer than RECONCILE_GRACE_SECONDS
    whose job is gone — Redis lost its data — are enqueued again. Enqueueing is idempotent (the
    job id is the delivery's id) and a delivery already attempted is skipped by the deliverer,
    so a job that finished in between costs one no-op job, never a second POST."""
    cutoff = datetime.now(UTC) - timedelta(seconds=runtime.settings.reconcile_grace_seconds)
    async with system_transaction(runtime.database) as db:
        rows = (
            await db.execute(
                text(
                    "select id, org_id from webhook_deliveries where status = 'queued' "
                    "and created_at < :cutoff order by created_at limit :n"
                ),
                {"cutoff": cutoff, "n": LOST_BATCH},
            )
        ).all()
    queue, requeued = runtime.queues[WEBHOOK_QUEUE_NAME], 0
    for delivery_id, org_id in rows:
        if await queue.state(str(delivery_id)) == "unknown":
            await enqueue(runtime, delivery_id=delivery_id, org_id=org_id)
            requeued += 1
    return requeued


async def _requeue_lost(runtime: Runtime) -> None:
    if requeued := await requeue_lost_deliveries(runtime):
        log.warning("webhook_deliveries_requeued", deliveries=requeued)


async def _dispatch(runtime: Runtime) -> None:
    await dispatch_pending(runtime)


def _retries(settings: Settings) -> dict[str, Any]:
    return {
        "attempts": settings.webhook_max_attempts,
        "backoff": {"type": "exponential", "delay": settings.webhook_backoff_ms},
    }


def _worker_options(settings: Settings) -> dict[str, Any]:
    return {
        "concurrency": WEBHOOK_CONCURRENCY,
        # An attempt is bounded by WEBHOOK_TIMEOUT_SECONDS; the lock outlives it.
        "lockDuration": max(60_000, int(settings.webhook_timeout_seconds * 4_000)),
    }


# One job per delivery (job id = the first attempt's row id, so enqueueing twice is a no-op);
# BullMQ retries failed attempts with exponential backoff.
QUEUE = QueueSpec(
    name=WEBHOOK_QUEUE_NAME, job_name="deliver", purpose="producer-webhooks", retries=_retries
)
JOB_TYPE = JobType(
    queue=QUEUE,
    processor=WebhookDeliverer,
    worker_purpose="worker-webhooks",
    worker_options=_worker_options,
    name_suffix=":webhooks",
)
# Every worker moves new events from the outbox to the queue, every few moments.
DISPATCH = Upkeep(
    name="webhook_dispatch",
    run=_dispatch,
    leader_only=False,
    interval=lambda settings: settings.webhook_dispatch_interval_seconds,
)
LOST_DELIVERIES = Upkeep(name="lost_webhook_deliveries", run=_requeue_lost)
