"""`POST /hooks/{trigger_id}`: where webhook triggers receive. No bearer token: the request is
authenticated by its trigger's scheme (verification.py) against the raw body.

In order: the trigger's rate limit (Redis, counted whether or not the id exists) → the body,
at most MAX_BODY_BYTES → the trigger → its verification → the body parsed (JSON or a form) →
an execution started with `{"body", "headers" (FORWARDED_HEADERS only), "query"}` as input, and
the delivery's id (when the scheme has one) as its idempotency key, kept in PostgreSQL → the
answer: 202 `{"execution_id"}` (a replayed delivery: 200 with the same id), or in `sync` mode
the execution's end once it comes, up to the trigger's timeout (then 202).

An unknown id, a disabled trigger and a failed verification answer the same 401
`trigger_rejected`, after the same work (an HMAC over the body, `dummy_verify`, when there is no
secret to check), and the rejection is recorded only once the answer has gone: the answer does
not tell a trigger that exists from one that does not. What is refused after verification
(415, 422, 409, 429) is recorded before answering. A rejected request's body is never stored.
See docs/TRIGGERS.md.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import structlog
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.background import BackgroundTask

from taskloom.auth.access import access
from taskloom.auth.ratelimit import Rate, take
from taskloom.crypto import CredentialKeyError
from taskloom.db.tenancy import tenant_transaction
from taskloom.errors import (
    BadRequest,
    DomainError,
    ErrorResponse,
    PayloadTooLarge,
    RateLimited,
    UnsupportedMediaType,
    ValidationFailed,
    error_response,
)
from taskloom.executions.models import WorkflowExecution
from taskloom.executions.queue import ExecutionQueue
from taskloom.executions.service import Origin, Started, StartKind, input_digest, start_execution
from taskloom.executions.state import TERMINAL
from taskloom.input_guard import NUMBER_PROBLEM, BadInput, check_decoded
from taskloom.locations import located
from taskloom.observability.metrics import TRIGGERS
from taskloom.observability.request_id import current_request_id
from taskloom.runtime import Runtime
from taskloom.triggers import service
from taskloom.triggers.models import DeliveryStatus, TriggerKind, WorkflowTrigger
from taskloom.triggers.schemas import HookAccepted, HookError, HookResult
from taskloom.triggers.verification import Rejected, Scheme, dummy_verify, verify
from taskloom.workflows.models import Workflow

log = structlog.get_logger("taskloom.triggers")

router = APIRouter(tags=["triggers"])

MAX_BODY_BYTES = 1_048_576
REJECTED_MESSAGE = "the trigger did not accept this request"
# What of the request reaches the workflow besides its body and query: what helps to tell
# deliveries apart, never a signature, token, cookie or Authorization.
FORWARDED_HEADERS = (
    "content-type",
    "user-agent",
    "idempotency-key",
    "taskloom-delivery",
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "webhook-id",
    "webhook-timestamp",
    "x-slack-request-timestamp",
    "x-slack-retry-num",
    "x-slack-retry-reason",
)
# Sync mode polls the execution's row, each time in a short transaction of its own.
FIRST_POLL_SECONDS, MAX_POLL_SECONDS = 0.05, 0.5


@dataclass(frozen=True)
class _Hook:
    """What a request needs of its trigger, read in one short transaction."""

    id: uuid.UUID
    org_id: uuid.UUID
    workflow_id: uuid.UUID
    enabled: bool
    scheme: Scheme
    sync_timeout_seconds: int | None  # None: async
    secrets: list[str]


@router.post(
    "/hooks/{trigger_id}",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=access("public"),
    response_model=None,
    responses={
        200: {"model": HookResult, "description": "Sync mode: the execution ended in time"},
        202: {"model": HookAccepted, **located(202)[202]},
        415: {"model": ErrorResponse, "description": "Neither JSON nor a form"},
    },
)
async def receive_hook(trigger_id: uuid.UUID, request: Request) -> Response:
    """Start the trigger's workflow with this request, verified by the trigger's scheme.
    Unknown, disabled and unverified: 401 `trigger_rejected`, all alike."""
    runtime: Runtime = request.app.state.runtime
    await _limit(runtime, trigger_id)
    body = await _read_body(request)
    try:
        async with _hook_transaction(runtime, trigger_id) as (db, hook):
            if hook is None or not hook.enabled:
                dummy_verify(body)  # the time a failed verification takes
                return _refused(runtime, hook, "trigger_disabled")
            verdict = verify(hook.scheme, hook.secrets, request.headers, body)
            if isinstance(verdict, Rejected):
                return _refused(runtime, hook, verdict.reason)
            delivery_id = verdict.delivery_id
            started = await _start(db, runtime, hook, lambda: _input(request, body), delivery_id)
    except _Refused as refused:  # the start's writes are rolled back; the rejection is kept
        await _record_rejection(runtime, refused.hook, _reason(refused.error), refused.delivery)
        raise refused.error from None
    execution = started.execution
    if started.created:
        await _submit(runtime, execution)
    TRIGGERS.labels(StartKind.WEBHOOK, "started" if started.created else "duplicate").inc()
    location = {"Location": f"/api/executions/{execution.id}"}
    if hook.sync_timeout_seconds is not None:
        ended = await _wait(runtime, hook.org_id, execution.id, hook.sync_timeout_seconds)
        if ended is not None:
            return JSONResponse(ended.model_dump(mode="json"), headers=location)
    accepted = HookAccepted(execution_id=execution.id).model_dump(mode="json")
    code = status.HTTP_202_ACCEPTED if started.created else status.HTTP_200_OK
    return JSONResponse(accepted, status_code=code, headers=location)


class _Refused(Exception):
    """A verified request refused while starting (415, 400, 422, 409, 429): `error` is the
    answer, recorded once the start's transaction has rolled back."""

    def __init__(self, error: DomainError, hook: _Hook, delivery: str | None) -> None:
        super().__init__(str(error))
        self.error, self.hook, self.delivery = error, hook, delivery


async def _limit(runtime: Runtime, trigger_id: uuid.UUID) -> None:
    """TRIGGER_RATE_LIMIT_PER_MINUTE per trigger id, before anything is read: a flood costs
    one Redis call per request and no database work, whether or not the trigger exists."""
    rate = Rate("hook", runtime.settings.trigger_rate_limit_per_minute, 60)
    key = runtime.keys("ratelimit", "hook", str(trigger_id))
    allowance = await take(redis=runtime.redis, key=key, rate=rate)
    if not allowance.allowed:
        TRIGGERS.labels(StartKind.WEBHOOK, "rejected").inc()
        raise RateLimited(
            "too many requests to this trigger; try again later",
            retry_after=allowance.reset_seconds,
        )


async def _read_body(request: Request) -> bytes:
    """The raw body (what was signed), refused with 413 as soon as it is known to be longer
    than MAX_BODY_BYTES (by its Content-Length, else while it arrives)."""
    too_large = PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    return bytes(body)


@asynccontextmanager
async def _hook_transaction(
    runtime: Runtime, trigger_id: uuid.UUID
) -> AsyncIterator[tuple[AsyncSession, _Hook | None]]:
    """One transaction on the application role for the whole request: the trigger's
    organization, from `taskloom_webhook_trigger_org` (SECURITY DEFINER, migration 0015: the
    request names no organization, only the trigger's id, and that function answers with the
    organization alone), then the tenant set to it and everything else under its row-level
    security. An unknown id runs the same statements (the tenant is none: nothing is found)."""
    async with runtime.database.app_sessions() as db, db.begin():
        await db.execute(_SET_TENANT, {"trigger": trigger_id, "request_id": current_request_id()})
        # The workflow comes along: start_execution then finds it in the session (no query).
        row = (
            await db.execute(
                select(WorkflowTrigger, Workflow)
                .join(Workflow, Workflow.id == WorkflowTrigger.workflow_id)
                .where(
                    WorkflowTrigger.id == trigger_id, WorkflowTrigger.kind == TriggerKind.WEBHOOK
                )
            )
        ).first()
        yield db, None if row is None else _hook(runtime, row.WorkflowTrigger)


# set_tenant's settings, the organization read by taskloom_webhook_trigger_org, in one statement
# (no user: the request is the sender's, not a person's).
_SET_TENANT = text(
    "select set_config('app.org_id', "
    "coalesce(taskloom_webhook_trigger_org(:trigger)::text, ''), true), "
    "set_config('app.user_id', '', true), "
    "set_config('app.request_id', coalesce(:request_id, ''), true)"
)


def _hook(runtime: Runtime, trigger: WorkflowTrigger) -> _Hook:
    try:
        secrets = service.verifying_secrets(runtime.cipher, trigger)
    except CredentialKeyError:  # its key was removed from CREDENTIAL_ENCRYPTION_KEYS
        log.exception("trigger_secret_unreadable", trigger_id=str(trigger.id))
        secrets = []  # verification answers no_secret, recorded on the trigger
    return _Hook(
        id=trigger.id,
        org_id=trigger.org_id,
        workflow_id=trigger.workflow_id,
        enabled=trigger.enabled,
        scheme=Scheme(str(trigger.verification)),
        sync_timeout_seconds=trigger.sync_timeout_seconds if trigger.response == "sync" else None,
        secrets=secrets,
    )


def _refused(runtime: Runtime, hook: _Hook | None, reason: str) -> Response:
    """The one answer to an unknown id, a disabled trigger and a failed verification. The
    rejection is recorded after the answer has been sent (an unknown id has nothing to record,
    and must not answer sooner for it); this is why the route builds this error itself."""
    response = error_response(401, "trigger_rejected", REJECTED_MESSAGE)
    if hook is None:
        TRIGGERS.labels(StartKind.WEBHOOK, "rejected").inc()
    else:
        response.background = BackgroundTask(_record_rejection_later, runtime, hook, reason)
    return response


async def _record_rejection_later(runtime: Runtime, hook: _Hook, reason: str) -> None:
    try:
        await _record_rejection(runtime, hook, reason, None)
    except Exception:  # the answer has gone; only the record is lost
        log.exception("hook_rejection_not_recorded", trigger_id=str(hook.id), reason=reason)


async def _record_rejection(
    runtime: Runtime, hook: _Hook, reason: str, delivery_id: str | None
) -> None:
    async with tenant_transaction(runtime.database, org_id=hook.org_id, user_id=None) as db:
        await service.record_delivery(
            db=db,
            org_id=hook.org_id,
            trigger_id=hook.id,
            status=DeliveryStatus.REJECTED,
            reason=reason,
            delivery_id=delivery_id,
        )
    TRIGGERS.labels(StartKind.WEBHOOK, "rejected").inc()


def _reason(refused: DomainError) -> str:
    """What a rejected delivery records: the error's code, and for an input that breaks the
    workflow's input_schema the failing paths (not the messages: they quote the body)."""
    errors = (refused.details or {}).get("errors") if refused.code == "input_invalid" else None
    if not errors:
        return refused.code
    return f"{refused.code}: " + ", ".join(".".join(e["loc"]) for e in errors)[:2000]


def _input(request: Request, body: bytes) -> dict[str, Any]:
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    return {
        "body": _parse(request.headers.get("content-type"), body),
        "headers": headers,
        "query": _fields(request.query_params.multi_items()),
    }


def _parse(content_type: str | None, body: bytes) -> Any:
    """JSON (any value; also without a Content-Type) or an urlencoded form (a dict); an empty
    body is null. Refused: another media type (415), malformed JSON (400), a value PostgreSQL
    cannot store (422, as input_guard.py answers elsewhere)."""
    if not body:
        return None
    media = (content_type or "").split(";")[0].strip().lower()
    if media in ("", "application/json") or media.endswith("+json"):
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest("the body is not valid JSON", code="malformed_json") from None
    elif media == "application/x-www-form-urlencoded":
        value = _fields(_form_pairs(body))
    else:
        raise UnsupportedMediaType(
            "the body must be JSON or application/x-www-form-urlencoded, not " + media[:100]
        )
    try:
        check_decoded(value, "body")
    except BadInput as bad:
        code = "invalid_number" if bad.problem == NUMBER_PROBLEM else "invalid_characters"
        raise ValidationFailed(str(bad), code=code) from None
    return value


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)


def _fields(pairs: Iterable[tuple[str, str]]) -> dict[str, str | list[str]]:
    """Form or query fields: a name's value, or its values in order when it is repeated."""
    fields: dict[str, str | list[str]] = {}
    for name, value in pairs:
        seen = fields.get(name)
        if seen is None:
            fields[name] = value
        elif isinstance(seen, list):
            seen.append(value)
        else:
            fields[name] = [seen, value]
    return fields


def _delivery_digest(payload: dict[str, Any]) -> str:
    """What a delivery id is bound to: the body and the query. Not the headers: a sender's
    retry re-stamps them (webhook-timestamp, X-Slack-Retry-Num) and must still find the first
    execution."""
    return input_digest({"body": payload["body"], "query": payload["query"]})


async def _start(
    db: AsyncSession,
    runtime: Runtime,
    hook: _Hook,
    request_input: Callable[[], dict[str, Any]],
    delivery_id: str | None,
) -> Started:
    """The execution, and the accepted delivery, in the request's transaction (refusals raise
    _Refused). A delivery id seen in the last IDEMPOTENCY_TTL_SECONDS finds its first
    execution (kept in PostgreSQL: a Redis flush cannot let it run twice)."""
    settings = runtime.settings
    limit = settings.max_queued_per_org
    try:
        payload = request_input()
        started = await start_execution(
            db=db,
            org_id=hook.org_id,
            workflow_id=hook.workflow_id,
            input=payload,
            # As the API does: no exact count while the scheduler knows it is far below.
            max_queued=None if runtime.fair.surely_below(hook.org_id, limit) else limit,
            origin=Origin(
                kind=StartKind.WEBHOOK, trigger_id=hook.id, request_id=current_request_id()
            ),
            idempotency_key=f"hook:{hook.id}:{delivery_id}" if delivery_id else None,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            idempotency_digest=_delivery_digest(payload) if delivery_id else None,
        )
    except DomainError as refused:
        raise _Refused(refused, hook, delivery_id) from None
    await service.record_delivery(
        db=db,
        org_id=hook.org_id,
        trigger_id=hook.id,
        status=DeliveryStatus.ACCEPTED,
        delivery_id=delivery_id,
        execution_id=started.execution.id,
    )
    return started


async def _submit(runtime: Runtime, execution: WorkflowExecution) -> None:
    """Hand the committed execution to the queue. Should Redis fail here, the execution stays
    queued in PostgreSQL and the reconciler submits it (the answer still names it)."""
    try:
        await ExecutionQueue(runtime).submit(
            execution_id=execution.id, org_id=execution.org_id, request_id=current_request_id()
        )
    except Exception:
        log.exception("hook_submit_failed", execution_id=str(execution.id))


async def _wait(
    runtime: Runtime, org_id: uuid.UUID, execution_id: uuid.UUID, timeout_seconds: int
) -> HookResult | None:
    """The execution's end within `timeout_seconds`, else None. Polls its row with a growing
    pause, each time in a short transaction: no connection is held while waiting."""
    deadline = time.monotonic() + timeout_seconds
    pause = FIRST_POLL_SECONDS
    while True:
        async with tenant_transaction(runtime.database, org_id=org_id, user_id=None) as db:
            row = (
                await db.execute(
                    select(
                        WorkflowExecution.status, WorkflowExecution.output, WorkflowExecution.error
                    ).where(WorkflowExecution.id == execution_id)
                )
            ).first()
        if row is not None and row.status in TERMINAL:
            return _result(execution_id, row.status, row.output, row.error)
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, MAX_POLL_SECONDS)


def _result(
    execution_id: uuid.UUID, status: str, output: Any, error: dict[str, Any] | None
) -> HookResult:
    """Succeeded: the output. Failed or cancelled: the error's code only (its message may hold
    what a step saw, which is the workflow's business, not the sender's)."""
    if status == "succeeded":
        return HookResult(execution_id=execution_id, status=status, output=output)
    code = str((error or {}).get("code") or status)
    return HookResult(execution_id=execution_id, status=status, error=HookError(code=code))
