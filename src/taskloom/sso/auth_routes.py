"""/auth/oidc: sign-in with an identity provider (docs/SSO.md).

The browser's flow ends as a password sign-in does (the UI's cookies, then `next`); its
refusals render the sign-in page with the message. The CLI's flow (`mode=token`) ends in a
one-time code exchanged at POST /auth/oidc/exchange; its refusals, and any request that
accepts application/json, get the usual JSON error.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import ValidationError
from starlette.responses import JSONResponse, RedirectResponse, Response

from taskloom.audit.service import AuditContext
from taskloom.auth.access import access
from taskloom.auth.api_limits import limit_auth_ip
from taskloom.auth.deps import client_context, get_runtime
from taskloom.auth.schemas import TokenResponse
from taskloom.errors import (
    ERROR_RESPONSES,
    ErrorResponse,
    RateLimited,
    ValidationFailed,
    error_response,
)
from taskloom.runtime import Runtime
from taskloom.sso import flow, providers
from taskloom.sso.errors import SsoRefused
from taskloom.sso.models import SLUG_PATTERN
from taskloom.sso.schemas import (
    CODE_CHALLENGE_PATTERN,
    ExchangeRequest,
    LinkRequest,
    ProviderLink,
)
from taskloom.web import cookies
from taskloom.web.forms import FieldError
from taskloom.web.rendering import render
from taskloom.web.session import anonymous

# Every route counts against the client address's /auth limit (RATE_LIMIT_AUTH_PER_IP). The
# browser routes (start, callback, link) take the refusal as a value, so that a browser's is the
# sign-in page like every other refusal of theirs; the others raise it (the JSON error).
router = APIRouter(prefix="/auth/oidc", tags=["sso"])
LIMITED = [Depends(limit_auth_ip)]


async def _auth_ip_counted(request: Request) -> RateLimited | None:
    """`limit_auth_ip`, its refusal returned rather than raised."""
    try:
        await limit_auth_ip(request)
    except RateLimited as limited:
        return limited
    return None


Limited = Annotated[RateLimited | None, Depends(_auth_ip_counted)]

FLOW_COOKIE = "taskloom_sso_flow"
FLOW_COOKIE_PATH = "/auth/oidc"
LINK_COOKIE = "taskloom_sso_link"  # the pending link of the link page (same path)
PUBLIC = access("public")

# A browser's refusal is the sign-in page (text/html) with its message; the CLI's, or any request
# that accepts application/json, the usual JSON error.
_PAGE = {"text/html": {"schema": {"type": "string"}}}
BROWSER_ANSWERS: dict[int | str, dict[str, Any]] = {
    **{
        status: {**ERROR_RESPONSES[status], "content": _PAGE}
        for status in (400, 401, 403, 404, 409, 413, 422, 429, 503)
    },
    502: {
        "model": ErrorResponse,
        "description": "The identity provider could not be reached",
        "content": _PAGE,
    },
}

RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
Client = Annotated[AuditContext, Depends(client_context)]
Slug = Annotated[str, Path(pattern=SLUG_PATTERN, max_length=63)]


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _secure(runtime: Runtime, request: Request) -> bool:
    public = runtime.settings.public_url
    return (public or str(request.base_url)).startswith("https://")


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


async def _sign_in_page(
    request: Request, runtime: Runtime, refused: SsoRefused | RateLimited, next_path: str
) -> Response:
    """The sign-in page with the refusal's message (the browser's answer to every refusal)."""
    page = anonymous(request)
    if isinstance(refused, flow.LinkRequired):
        response: Response = render(
            page,
            "sso_link.html",
            status=refused.status_code,
            title="Link your account",
            email=refused.email,
            provider=refused.provider,
            errors=[],
        )
        response.set_cookie(
            LINK_COOKIE,
            refused.link_token,
            max_age=flow.LINK_SECONDS,
            path=FLOW_COOKIE_PATH,
            secure=_secure(runtime, request),
            httponly=True,
            samesite="lax",
        )
    else:
        response = render(
            page,
            "login.html",
            status=refused.status_code,
            title="Sign in",
            email="",
            next=flow.safe_next(next_path) if next_path.startswith("/ui/") else "/ui/",
            errors=[FieldError("", refused.message)],
            registration=runtime.settings.registration_mode.value,
            providers=await sign_in_links(runtime),
        )
    response.headers.update(refused.headers or {})  # Retry-After of a rate-limit refusal
    cookies.apply_queued(request, response, secure=runtime.settings.is_production)
    return _no_store(response)


async def _rate_limited(
    request: Request, runtime: Runtime, limited: RateLimited, *, as_json: bool, next_path: str
) -> Response:
    """A browser route's answer past the /auth limit: the JSON error (raised) when `as_json`,
    else the sign-in page with its message and Retry-After."""
    if as_json:
        raise limited
    return await _sign_in_page(request, runtime, limited, next_path)


def _json_refusal(refused: SsoRefused) -> Response:
    details = None
    if isinstance(refused, flow.LinkRequired):
        details = {"link_token": refused.link_token, "email": refused.email}
    return error_response(
        refused.status_code, refused.code, refused.message, details, refused.headers
    )


async def sign_in_links(runtime: Runtime) -> list[ProviderLink]:
    return [
        ProviderLink(slug=slug, display_name=name, start_url=f"/auth/oidc/{slug}/start")
        for slug, name in await providers.enabled_providers(database=runtime.database)
    ]


def _signed_in(request: Request, runtime: Runtime, outcome: flow.Outcome) -> Response:
    """The end of a flow: the UI's cookies and `next` (browser), or the one-time code."""
    if outcome.mode == "browser":
        assert outcome.pair is not None
        cookies.queue_tokens(request, outcome.pair)
        cookies.queue_nonce(request, None)
        response: Response = RedirectResponse(outcome.next, status_code=303)
        cookies.apply_queued(request, response, secure=runtime.settings.is_production)
    elif outcome.client_redirect:
        separator = "&" if "?" in outcome.client_redirect else "?"
        target = outcome.client_redirect + separator + urlencode({"code": outcome.code})
        response = RedirectResponse(target, status_code=302)
    elif _wants_json(request):
        response = JSONResponse({"code": outcome.code, "expires_in": flow.CODE_SECONDS})
    else:
        page = anonymous(request)
        response = render(
            page,
            "sso_code.html",
            title="Sign-in code",
            code=outcome.code,
            seconds=flow.CODE_SECONDS,
        )
        cookies.apply_queued(request, response, secure=runtime.settings.is_production)
    response.delete_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH)
    return _no_store(response)


@router.get("/providers", openapi_extra=PUBLIC, dependencies=LIMITED)
async def list_oidc_providers(runtime: RuntimeDep) -> list[ProviderLink]:
    """The enabled providers, with the URL that starts a sign-in with each."""
    return await sign_in_links(runtime)


@router.get(
    "/{slug}/start", openapi_extra=PUBLIC, response_class=Response, responses=BROWSER_ANSWERS
)
async def oidc_start(
    slug: Slug,
    request: Request,
    runtime: RuntimeDep,
    client: Client,
    limited: Limited,
    next_path: Annotated[str | None, Query(alias="next", max_length=2000)] = None,
    mode: Literal["browser", "token"] = "browser",
    code_challenge: Annotated[
        str | None, Query(pattern=CODE_CHALLENGE_PATTERN, max_length=43)
    ] = None,
    redirect_uri: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """Start a sign-in: 302 to the provider. `mode=token` (the CLI) needs `code_challenge`
    (S256 of the verifier it later gives to POST /auth/oidc/exchange) and may name a loopback
    `redirect_uri` for the one-time code."""
    if limited is not None:
        as_json = mode == "token" or _wants_json(request)
        return await _rate_limited(
            request, runtime, limited, as_json=as_json, next_path=next_path or "/ui/"
        )
    if mode == "token" and code_challenge is None:
        raise ValidationFailed("query.code_challenge: required with mode=token")
    try:
        started = await flow.start(
            runtime=runtime,
            slug=slug,
            base_url=str(request.base_url),
            next_path=next_path,
            mode=mode,
            code_challenge=code_challenge,
            client_redirect=redirect_uri if mode == "token" else None,
        )
    except SsoRefused as refused:
        await flow.record_failure(runtime, slug, refused.code, client)
        if mode == "token" or _wants_json(request):
            return _json_refusal(refused)
        return await _sign_in_page(request, runtime, refused, next_path or "/ui/")
    response = RedirectResponse(started.authorize_url, status_code=302)
    response.set_cookie(
        FLOW_COOKIE,
        started.state,
        max_age=flow.FLOW_SECONDS,
        path=FLOW_COOKIE_PATH,
        secure=_secure(runtime, request),
        httponly=True,
        samesite="lax",
    )
    return _no_store(response)


@router.get(
    "/{slug}/callback", openapi_extra=PUBLIC, response_class=Response, responses=BROWSER_ANSWERS
)
async def oidc_callback(
    slug: Slug, request: Request, runtime: RuntimeDep, client: Client, limited: Limited
) -> Response:
    """The redirect URI registered at the provider: checks its answer and signs the person in.
    Refused for the rate limit, the flow is left as it was: the same answer can be sent again
    once the limit allows (within the flow's 10 minutes)."""
    if limited is not None:
        as_json = _wants_json(request)
        return await _rate_limited(request, runtime, limited, as_json=as_json, next_path="/ui/")
    params = {k: v for k, v in request.query_params.items() if len(v) <= 4096}
    token_mode, next_path = _wants_json(request), "/ui/"
    try:
        taken = await flow.take_flow(runtime, slug, params, request.cookies.get(FLOW_COOKIE))
        token_mode = token_mode or taken.mode == "token"
        next_path = taken.next
        outcome = await flow.complete(
            runtime=runtime, slug=slug, flow=taken, params=params, client=client
        )
    except SsoRefused as refused:
        await flow.record_failure(runtime, slug, refused.code, client)
        # In token mode the person is still in a browser: the link page is theirs to fill in.
        if token_mode and (not isinstance(refused, flow.LinkRequired) or _wants_json(request)):
            response = _json_refusal(refused)
        else:
            response = await _sign_in_page(request, runtime, refused, next_path)
        response.delete_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH)
        return response
    return _signed_in(request, runtime, outcome)


@router.post("/link", openapi_extra=PUBLIC, response_class=Response, responses=BROWSER_ANSWERS)
async def oidc_link(
    request: Request, runtime: RuntimeDep, client: Client, limited: Limited
) -> Response:
    """Link the pending sign-in's identity to the account whose password this is (JSON
    `{link_token, password}`, or the link page's form), then finish the sign-in."""
    form = "application/json" not in request.headers.get("content-type", "")
    if limited is not None:
        as_json = not form or _wants_json(request)
        return await _rate_limited(request, runtime, limited, as_json=as_json, next_path="/ui/")
    try:
        if form:
            # The link page's form: its token is the cookie the page set in this browser, never
            # a field, so a form posted from another site (no SameSite=Lax cookie) or another
            # browser links nothing (no login CSRF, no link planted in someone else's browser).
            data = await request.form()
            cookie = request.cookies.get(LINK_COOKIE)
            if not cookie:
                refused = SsoRefused("sso_flow_not_started")
                await flow.record_failure(runtime, "-", refused.code, client)
                return await _sign_in_page(request, runtime, refused, "/ui/")
            body = LinkRequest(link_token=cookie, password=str(data.get("password", "")))
        else:
            body = LinkRequest.model_validate(json.loads(await request.body()))
    except (ValidationError, ValueError):
        raise ValidationFailed("body: link_token and password are required") from None
    try:
        _, outcome = await flow.link(
            runtime=runtime, link_token=body.link_token, password=body.password, client=client
        )
    except SsoRefused as refused:
        await flow.record_failure(runtime, refused.provider or "-", refused.code, client)
        if not form or _wants_json(request):
            return _json_refusal(refused)
        return await _sign_in_page(request, runtime, refused, "/ui/")
    if outcome.mode == "browser" and not form:
        assert outcome.pair is not None
        return JSONResponse(TokenResponse.of(outcome.pair).model_dump(mode="json"))
    response = _signed_in(request, runtime, outcome)
    response.delete_cookie(LINK_COOKIE, path=FLOW_COOKIE_PATH)
    return response


@router.post("/exchange", openapi_extra=PUBLIC, dependencies=LIMITED)
async def oidc_exchange(
    body: ExchangeRequest, runtime: RuntimeDep, client: Client
) -> TokenResponse:
    """The CLI's tokens for the one-time code of a `mode=token` sign-in (once, within 60 s, with
    the PKCE verifier of the challenge it started with)."""
    try:
        pair = await flow.exchange(
            runtime=runtime, code=body.code, code_verifier=body.code_verifier, client=client
        )
    except SsoRefused as refused:
        await flow.record_failure(runtime, refused.provider or "-", refused.code, client)
        raise
    return TokenResponse.of(pair)
