"""Route dependencies: authenticate the request, open its tenant-scoped transaction, and
enforce roles. The tenant always comes from the authenticated principal."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit.service import AuditContext
from taskloom.auth import revocation
from taskloom.auth.authenticate import authenticate
from taskloom.auth.principal import Principal
from taskloom.db.driver import Statements, app_connection
from taskloom.db.tenancy import tenant_reads, tenant_transaction
from taskloom.errors import Forbidden, Unauthorized
from taskloom.observability.request_id import current_request_id
from taskloom.orgs.models import Role
from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.auth")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def client_context(request: Request) -> AuditContext:
    """Where the request comes from (the actor is filled in once known)."""
    return AuditContext(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        request_id=current_request_id(),
    )


@dataclass
class RequestContext:
    runtime: Runtime
    db: AsyncSession
    principal: Principal
    audit: AuditContext
    # Run after the transaction commits (and only then), before the response is sent: e.g.
    # enqueue a job for a row the worker must be able to read.
    after_commit: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


# Declared to OpenAPI as the `bearer` security scheme of every operation that authenticates, so
# /docs has a working Authorize button; the missing-token answer stays ours (401, JSON error).
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An access token (from /auth/login or /auth/refresh) or an API key (tlk_...).",
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]


def bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("missing bearer token")
    return credentials.credentials.strip()


@asynccontextmanager
async def open_request_context(request: Request, token: str) -> AsyncIterator[RequestContext]:
    """Authenticate `token` (an access JWT or an API key), open the tenant transaction with the
    principal's org and user set, and run the `after_commit` hooks once it has committed. The
    bearer dependency below and the web UI's cookie session (taskloom/web) both build their
    RequestContext here. The request is counted against its API key's or session's rate limit
    first: one past it does no work (no database lookup, no transaction). Changes to someone's
    access marked on the transaction are published to the principal caches once committed,
    before the hooks and the response (taskloom/auth/revocation.py)."""
    runtime = get_runtime(request)
    caller = await authenticate(request, runtime, token)
    hooks: list[Callable[[], Awaitable[None]]] = []
    async with tenant_transaction(
        runtime.database, org_id=caller.org_id, user_id=caller.user_id
    ) as db:
        principal = caller.principal or await caller.load(db)
        client = client_context(request)
        yield RequestContext(
            runtime=runtime,
            db=db,
            principal=principal,
            audit=AuditContext(
                actor_user_id=principal.user_id,
                actor_api_key_id=principal.api_key_id,
                ip=client.ip,
                user_agent=client.user_agent,
                request_id=client.request_id,
            ),
            after_commit=hooks,
        )
        revoked = revocation.marked(db)
    if revoked:  # committed: every process's cached principals of these people stop now
        await revocation.publish(runtime, revoked)
    for hook in hooks:
        try:
            await hook()
        except Exception:  # the committed work stands; whoever registered the hook recovers
            log.exception("after_commit_hook_failed", hook=getattr(hook, "__name__", repr(hook)))


async def _request_context(request: Request, bearer: Bearer) -> AsyncIterator[RequestContext]:
    async with open_request_context(request, bearer_token(bearer)) as ctx:
        yield ctx


# `scope="function"`: the transaction commits before the response is sent, so a client never
# sees a success for work that was then rolled back.
Context = Annotated[RequestContext, Depends(_request_context, scope="function")]


async def _optional_context(request: Request) -> AsyncIterator[RequestContext | None]:
    header = request.headers.get("authorization")
    if header is None:
        yield None
        return
    # Read here rather than through the bearer dependency: a public route declares no security
    # scheme in OpenAPI, and a token it is sent must still be a valid one.
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token")
    async with open_request_context(request, token.strip()) as ctx:
        yield ctx


# Public routes that show more to an authenticated caller: None without an Authorization header;
# with one, it must be a valid bearer token (401 otherwise).
OptionalContext = Annotated[RequestContext | None, Depends(_optional_context, scope="function")]


async def _session_only(ctx: Context) -> RequestContext:
    if ctx.principal.kind == "api_key":
        raise Forbidden(
            "API keys cannot do this: it acts on the person's own account, sessions or keys "
            "(sign in instead)"
        )
    return ctx


# Routes that act on a person's own account, sessions or API keys: a signed-in session only. A
# leaked API key (bound to one organization) must not mint more keys, export the person's data
# from every organization, switch organizations or end sessions.
Session = Annotated[RequestContext, Depends(_session_only)]


@dataclass
class ReadContext:
    """A request that only reads, authenticated and its role checked: `reads()` opens its
    read-only tenant transaction on the asyncpg connection (db/tenancy.tenant_reads), without
    an ORM session. For the API's hot reads (the list endpoints): a third of the CPU of a
    RequestContext's transaction. The route ends the transaction itself (`async with`), before
    its answer is serialized."""

    runtime: Runtime
    principal: Principal
    org_id: uuid.UUID | None
    user_id: uuid.UUID

    def reads(self) -> AbstractAsyncContextManager[Statements]:
        return tenant_reads(self.runtime.database, org_id=self.org_id, user_id=self.user_id)

    def calls(self) -> AbstractAsyncContextManager[Statements]:
        """A connection in autocommit, for the read functions that set the tenant themselves
        (db/tenancy.tenant_arguments): one round trip each."""
        return app_connection(self.runtime.database)


async def viewer_reads(request: Request, token: str) -> ReadContext:
    """Authenticate `token` (counted against its rate limit), check the viewer role: the
    ViewerReads dependency's work, for the read lane (auth/read_lane.py) too."""
    runtime = get_runtime(request)
    caller = await authenticate(request, runtime, token)
    principal = await caller.resolve()
    check_role(principal, Role.VIEWER)
    return ReadContext(runtime, principal, caller.org_id, caller.user_id)


async def _viewer_reads(request: Request, bearer: Bearer) -> ReadContext:
    return await viewer_reads(request, bearer_token(bearer))


# Read-only routes for viewers and up (the role is checked before any transaction opens).
ViewerReads = Annotated[ReadContext, Depends(_viewer_reads)]


def require_role(minimum: Role) -> Callable[..., Coroutine[Any, Any, RequestContext]]:
    """Dependency factory: the caller must have at least `minimum` in the current org."""

    async def _check(ctx: Context) -> RequestContext:
        check_role(ctx.principal, minimum)
        return ctx

    return _check


def check_role(principal: Principal, minimum: Role) -> None:
    """Forbidden unless the principal has at least `minimum` in its current organization."""
    if not principal.has_role(minimum):
        raise Forbidden(f"this action needs the {minimum.value} role or higher")


Viewer = Annotated[RequestContext, Depends(require_role(Role.VIEWER))]


async def _org_session(ctx: Viewer) -> RequestContext:
    return await _session_only(ctx)


# A signed-in session with a role in the current organization (API key management).
OrgSession = Annotated[RequestContext, Depends(_org_session)]
Member = Annotated[RequestContext, Depends(require_role(Role.MEMBER))]
Admin = Annotated[RequestContext, Depends(require_role(Role.ADMIN))]
Owner = Annotated[RequestContext, Depends(require_role(Role.OWNER))]
