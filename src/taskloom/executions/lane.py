"""`POST /api/workflows/{id}/execute` without FastAPI's per-request machinery: the one route
every execution started through the API takes, answered by a plain ASGI handler at about half
the CPU (docs/PERFORMANCE.md, issue 20).

It takes only the usual request (a bearer token, a JSON object with nothing but an `input`
object, or no body at all; no Idempotency-Key) and hands anything else, before doing any work,
to the route in executions/routes.py, which stays the documented operation and answers what is
unusual (a malformed body, a missing token, an idempotent retry) as ever. Once it has taken a
request it answers it as the route would: the same authentication and rate limit
(auth/authenticate.py), role, start (`service.start_executions_alone`: one call that sets each
start's tenant and commits, for the starts that arrive together, `Starts`), submission to the
fair scheduler after the commit, metric, status, body and Location; refusals are the same
DomainErrors in the same JSON. It sits inside every middleware (request id, metrics under the
route's own path, security and rate-limit headers, body limit, input guard, unexpected
errors), so those apply to it unchanged."""

from __future__ import annotations

import asyncio
import contextvars
import json
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskloom.audit.service import AuditContext
from taskloom.auth.authenticate import authenticate
from taskloom.auth.deps import check_role
from taskloom.errors import DomainError, error_response
from taskloom.executions import inline, routes, service
from taskloom.executions.queue import ExecutionQueue, count_start, queue_limit_of
from taskloom.observability.request_id import current_request_id
from taskloom.orgs.models import Role
from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.executions")

# The route it stands in for: HTTP metrics and the rate limit's class read it from the scope.
ROUTE = next(
    route
    for route in routes.router.routes
    if isinstance(route, APIRoute) and route.endpoint is routes.execute_workflow
)
_PREFIX, _SUFFIX = ROUTE.path.split("{workflow_id}")
_UUID_LENGTH = 36


class ExecuteLane:
    """The ASGI middleware (innermost) that answers the usual execute request itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.starts = Starts()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        taken = _taken(scope)
        if taken is None:
            await self.app(scope, receive, send)
            return
        workflow_id, token, json_body = taken
        messages: list[Message] = []
        body: Any = {}
        raw: bytes | None = b""
        if json_body:
            raw = await _read(receive, messages)
            body = _parsed(raw) if raw is not None else None
        if body is None:  # not the usual body: the route answers, with the body replayed
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["route"] = ROUTE
        try:
            status, headers, content = await _execute(
                scope, receive, self.starts, workflow_id, token, body, len(raw or b"")
            )
        except DomainError as refused:
            response = error_response(
                refused.status_code,
                refused.code,
                refused.message,
                refused.details,
                refused.headers,
            )
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def _taken(scope: Scope) -> tuple[uuid.UUID, str, bool] | None:
    """(workflow id, bearer token, whether a JSON body follows) of a request the lane answers;
    None for anything else."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if (
        len(path) != len(_PREFIX) + _UUID_LENGTH + len(_SUFFIX)
        or not path.startswith(_PREFIX)
        or not path.endswith(_SUFFIX)
    ):
        return None
    try:
        workflow_id = uuid.UUID(path[len(_PREFIX) : -len(_SUFFIX)])
    except ValueError:
        return None
    token = media = length = None
    chunked = authorized = False
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorized:
                return None  # two: the route reads the first, as Starlette does
            authorized = True
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                token = credentials.strip()
        elif name == b"content-type":
            media = value.decode("latin-1").split(";")[0].strip().lower()
        elif name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"idempotency-key":
            return None
    if not token:
        return None
    if media == "application/json":
        return workflow_id, token, True
    if media is None and (length == b"0" or (length is None and not chunked)):
        return workflow_id, token, False  # no body: no input
    return None


async def _read(receive: Receive, messages: list[Message]) -> bytes | None:
    """The whole body (already buffered and checked by the input guard), kept in `messages`
    for a replay; None if the client went away."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parsed(raw: bytes) -> dict[str, Any] | None:
    """`{}` or `{"input": {...}}`: the input; anything else (malformed, other fields, another
    type) is None, for the route to refuse in its own words."""
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(decoded, dict) or not decoded.keys() <= {"input"}:
        return None
    input = decoded.get("input", {})
    return input if isinstance(input, dict) else None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replay


async def _execute(
    scope: Scope,
    receive: Receive,
    starts: Starts,
    workflow_id: uuid.UUID,
    token: str,
    input: dict[str, Any],
    size: int,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """What `routes.execute_workflow` does for a request without an idempotency key."""
    runtime: Runtime = scope["app"].state.runtime
    caller = await authenticate(Request(scope, receive), runtime, token)
    principal = await caller.resolve()
    check_role(principal, Role.MEMBER)
    org_id = principal.current_org()
    request_id = current_request_id()
    start = service.Start(
        workflow_id=workflow_id,
        input=input,
        max_queued=queue_limit_of(runtime, org_id),
        origin=service.api_origin(principal, AuditContext(request_id=request_id)),
    )
    data = ExecutionQueue(runtime).job_data_sent(start.execution_id, org_id, request_id)
    started = await starts.start(runtime, org_id, start, data, size)
    count_start(service.StartKind.API, started)
    execution = started.execution
    content = json.dumps(
        {"execution_id": str(execution.id), "status": str(execution.status)},
        separators=(",", ":"),
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        (b"location", f"/api/executions/{execution.id}".encode()),
    ]
    return 202, headers, content


def _job_data(runtime: Runtime, started: service.Started, waiting: _Waiting) -> dict[str, Any]:
    """The job's data; with the input when the execution is inline, its request was small and
    its organization has no flood waiting (executions/inline.py: the worker may then run it
    without a claim)."""
    if not started.inline or waiting.size > inline.INLINE_INPUT_BYTES:
        return waiting.data
    queued = runtime.fair.seen_queued(waiting.org_id)
    if queued is not None and queued >= inline.INLINE_QUEUED_MOST:
        return waiting.data
    execution = started.execution
    return inline.job_data(
        waiting.data,
        input=waiting.start.input,
        workflow_id=execution.workflow_id,
        version=execution.workflow_version,
    )


@dataclass
class _Waiting:
    org_id: uuid.UUID
    start: service.Start
    data: dict[str, Any]  # its job's
    size: int  # bytes of its request's body
    future: asyncio.Future[service.Started]


class Starts:
    """The starts of the requests in flight in this process. One group is made at a time: a
    start that finds none being made goes at once; those arriving meanwhile wait for it and go
    together next, in one call (`service.start_executions_alone`: one transaction, each start
    under its own tenant) and one submission to the fair scheduler. Nothing waits longer than
    the group before it takes; under load the groups grow and the round trips, transactions
    and script calls per start shrink. A start's answer is its own, refusals and errors alike.
    A group is bounded in starts and in bytes, so an organization sending large inputs delays
    the others in its group by little."""

    MOST = 64  # starts in one group
    MOST_BYTES = 256 * 1024  # of their bodies together (a larger one goes alone)

    def __init__(self) -> None:
        self._waiting: list[_Waiting] = []
        self._making: asyncio.Task[None] | None = None

    async def start(
        self,
        runtime: Runtime,
        org_id: uuid.UUID,
        start: service.Start,
        data: dict[str, Any],
        size: int,
    ) -> service.Started:
        future: asyncio.Future[service.Started] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(org_id, start, data, size, future))
        if self._making is None or self._making.done():
            # A context of its own: no request's ids in what its groups log.
            self._making = asyncio.create_task(self._make(runtime), context=contextvars.Context())
        return await future

    def _next_group(self) -> list[_Waiting]:
        taken = size = 0
        for waiting in self._waiting:
            if taken and (taken == self.MOST or size + waiting.size > self.MOST_BYTES):
                break
            taken, size = taken + 1, size + waiting.size
        group, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return group

    async def _make(self, runtime: Runtime) -> None:
        while self._waiting:
            group = self._next_group()
            try:
                answers = await self._group(runtime, group)
            except BaseException as failed:  # PostgreSQL unavailable: each start says so
                for waiting in group:
                    if not waiting.future.done():
                        waiting.future.set_exception(failed)
                if not isinstance(failed, Exception):
                    raise
                continue
            for answer, waiting in zip(answers, group, strict=True):
                if waiting.future.done():  # its request went away; its execution stands
                    continue
                if isinstance(answer, service.Started):
                    waiting.future.set_result(answer)
                else:
                    waiting.future.set_exception(answer)

    @staticmethod
    async def _group(runtime: Runtime, group: list[_Waiting]) -> list[service.Started | Exception]:
        answers = await service.start_executions_alone(
            runtime.database, [(waiting.org_id, waiting.start) for waiting in group]
        )
        made = [
            (answer.execution.org_id, answer.execution.id, _job_data(runtime, answer, waiting))
            for answer, waiting in zip(answers, group, strict=True)
            if isinstance(answer, service.Started)
        ]
        try:  # committed: a submission that fails is the reconciler's to make again
            await ExecutionQueue(runtime).submit_many(made)
        except Exception:
            log.exception("execution_submit_failed", executions=len(made))
        return answers
