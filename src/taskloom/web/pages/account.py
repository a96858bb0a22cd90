"""Sign in, register, sign out, and switch organization."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from taskloom.auth import service as auth
from taskloom.auth.deps import client_context, get_runtime
from taskloom.auth.schemas import LoginRequest, RegisterRequest
from taskloom.config import Registration
from taskloom.errors import BadRequest, DomainError, Forbidden
from taskloom.sso import providers as sso_providers
from taskloom.sso import sessions as sso_sessions
from taskloom.web import cookies
from taskloom.web.errors import UiRoute
from taskloom.web.forms import FieldError, from_validation, text
from taskloom.web.rendering import redirect, render
from taskloom.web.session import anonymous, signed_in

router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Only a path inside the UI: never another site (`//evil.example`, `https://…`)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


@router.get("/")
async def home(request: Request) -> Response:
    async with signed_in(request) as page:
        if page.principal.org_id is not None:
            return redirect("/ui/workflows")
        if page.principal.is_superuser:
            return redirect("/ui/admin/flags")
        return redirect("/ui/privacy")


@router.get("/login")
async def login_form(
    request: Request, next_page: Annotated[str | None, Query(alias="next", max_length=2000)] = None
) -> Response:
    page = anonymous(request)
    target = _safe_next(next_page)
    return render(
        page,
        "login.html",
        title="Sign in",
        email="",
        next=target,
        errors=[],
        registration=_registration(request),
        providers=await _sign_in_providers(request),
    )


async def _sign_in_providers(request: Request) -> list[dict[str, str]]:
    """The enabled identity providers, for the "Sign in with …" links."""
    found = await sso_providers.enabled_providers(database=get_runtime(request).database)
    return [{"display_name": name, "start_url": f"/auth/oidc/{slug}/start"} for slug, name in found]


@router.post("/login")
async def login(request: Request) -> Response:
    page = anonymous(request)
    form = await page.form()
    email, target = text(form, "email"), _safe_next(text(form, "next"))
    links = await _sign_in_providers(request)

    def again(status: int, errors: list[FieldError]) -> Response:
        values = {
            "email": email,
            "next": target,
            "errors": errors,
            "registration": _registration(request),
            "providers": links,
        }
        return render(page, "login.html", status=status, title="Sign in", **values)

    try:
        body = LoginRequest(email=email, password=text(form, "password"))
    except ValidationError as invalid:
        return again(422, from_validation(invalid))
    try:
        pair = await auth.login(
            runtime=get_runtime(request),
            email=body.email,
            password=body.password,
            org_id=None,
            client=client_context(request),
        )
    except DomainError as refused:
        return again(refused.status_code, [FieldError("", refused.message)])
    cookies.queue_tokens(request, pair)
    cookies.queue_nonce(request, None)
    return redirect(target)


def _registration(request: Request) -> str:
    return get_runtime(request).settings.registration_mode.value


@router.get("/register")
async def register_form(request: Request) -> Response:
    page = anonymous(request)
    if get_runtime(request).settings.registration_mode is Registration.CLOSED:
        raise Forbidden(
            "Self-registration is closed on this instance: ask an administrator for an account.",
            code="registration_closed",
        )
    return render(
        page,
        "register.html",
        title="Create an account",
        email="",
        display_name="",
        organization_name="",
        errors=[],
        registration=_registration(request),
    )


@router.post("/register")
async def register(request: Request) -> Response:
    page = anonymous(request)
    form = await page.form()
    values: dict[str, Any] = {
        "email": text(form, "email"),
        "display_name": text(form, "display_name"),
        "organization_name": text(form, "organization_name"),
    }

    def again(status: int, errors: list[FieldError]) -> Response:
        return render(
            page,
            "register.html",
            status=status,
            title="Create an account",
            errors=errors,
            registration=_registration(request),
            **values,
        )

    try:
        body = RegisterRequest(
            email=values["email"],
            password=text(form, "password"),
            display_name=values["display_name"].strip(),
            organization_name=values["organization_name"].strip() or None,
        )
    except ValidationError as invalid:
        return again(422, from_validation(invalid))
    try:
        pair = await auth.register(
            runtime=get_runtime(request),
            email=body.email,
            password=body.password,
            display_name=body.display_name,
            organization_name=body.organization_name,
            client=client_context(request),
        )
    except DomainError as refused:
        field = "password" if refused.code == "weak_password" else ""
        field = "email" if refused.code == "email_taken" else field
        return again(refused.status_code, [FieldError(field, refused.message)])
    cookies.queue_tokens(request, pair)
    cookies.queue_nonce(request, None)
    return redirect("/ui/workflows?notice=registered")


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Sign out; a session an identity provider started goes on to the provider's own logout
    (RP-initiated logout) when it advertises one, which comes back to the sign-in page."""
    async with signed_in(request) as page:
        await page.form()
        await auth.logout(
            runtime=page.runtime, db=page.db, principal=page.principal, context=page.audit
        )
        session_id = page.principal.session_id
    cookies.queue_signed_out(request)
    runtime = get_runtime(request)
    assert session_id is not None
    base = (runtime.settings.public_url or str(request.base_url)).rstrip("/")
    provider_logout = await sso_sessions.logout_url(
        runtime, session_id=session_id, post_logout_redirect_uri=f"{base}{SIGNED_OUT}"
    )
    return redirect(provider_logout or SIGNED_OUT)


SIGNED_OUT = "/ui/login?notice=signed-out"


@router.post("/switch-org")
async def switch_org(request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        try:
            org_id = uuid.UUID(text(form, "org_id"))
        except ValueError:
            raise BadRequest("choose an organization") from None
        token = await auth.switch_org(
            runtime=page.runtime,
            db=page.db,
            principal=page.principal,
            org_id=org_id,
            context=page.audit,
        )
    cookies.queue_access_token(request, token, page.runtime.settings.access_token_ttl_seconds)
    return redirect("/ui/workflows?notice=org-switched")
