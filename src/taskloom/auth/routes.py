"""/auth: register, sign in, refresh, sign out, switch organization, me, API keys."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from sqlalchemy import select

from taskloom.audit.service import AuditContext
from taskloom.auth import api_keys, password_changes, service
from taskloom.auth.access import access
from taskloom.auth.api_limits import limit_auth_ip
from taskloom.auth.deps import Context, OrgSession, Session, client_context, get_runtime
from taskloom.auth.models import ApiKey, User
from taskloom.auth.schemas import (
    AccessTokenResponse,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    LoginRequest,
    MembershipOut,
    MeResponse,
    PasswordChanged,
    PasswordChangeRequest,
    RefreshRequest,
    RegisterRequest,
    SwitchOrgRequest,
    TokenResponse,
    UserOut,
)
from taskloom.locations import located, set_location
from taskloom.orgs import service as orgs
from taskloom.runtime import Runtime
from taskloom.sso import sessions as sso_sessions

# Every /auth route is counted against its client IP first (RATE_LIMIT_AUTH_PER_IP); sign-in
# and registration also keep their own, stricter limits (taskloom/auth/ratelimit.py).
router = APIRouter(prefix="/auth", tags=["auth"], dependencies=[Depends(limit_auth_ip)])

RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
Client = Annotated[AuditContext, Depends(client_context)]


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=access("public"),
    responses=located(201),
)
async def register(
    body: RegisterRequest, runtime: RuntimeDep, client: Client, response: Response
) -> TokenResponse:
    pair = await service.register(
        runtime=runtime,
        email=body.email,
        password=body.password,
        display_name=body.display_name,
        organization_name=body.organization_name,
        client=client,
    )
    set_location(response, "/auth/me")  # the new account, as its tokens see it
    return TokenResponse.of(pair)


@router.post("/login", openapi_extra=access("public"))
async def login(body: LoginRequest, runtime: RuntimeDep, client: Client) -> TokenResponse:
    pair = await service.login(
        runtime=runtime, email=body.email, password=body.password, org_id=body.org_id, client=client
    )
    return TokenResponse.of(pair)


@router.post("/refresh", openapi_extra=access("public"))
async def refresh(body: RefreshRequest, runtime: RuntimeDep, client: Client) -> TokenResponse:
    # A session SSO started with offline_access asks its provider first (docs/SSO.md).
    pair = await sso_sessions.refresh(runtime, body.refresh_token, client)
    return TokenResponse.of(pair)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=access("authenticated", api_key=False),
)
async def logout(ctx: Session) -> Response:
    await service.logout(runtime=ctx.runtime, db=ctx.db, principal=ctx.principal, context=ctx.audit)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=access("authenticated", api_key=False),
)
async def logout_all(ctx: Session) -> Response:
    await service.logout_all(
        runtime=ctx.runtime, db=ctx.db, principal=ctx.principal, context=ctx.audit
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/password", openapi_extra=access("authenticated", api_key=False))
async def change_password(body: PasswordChangeRequest, ctx: Session) -> PasswordChanged:
    """Change your password (with the current one); your other sessions are signed out."""
    revoked = await password_changes.change_own_password(
        runtime=ctx.runtime,
        db=ctx.db,
        principal=ctx.principal,
        current_password=body.current_password,
        new_password=body.new_password,
        context=ctx.audit,
    )
    return PasswordChanged(sessions_revoked=revoked)


@router.post("/switch-org", openapi_extra=access("authenticated", api_key=False))
async def switch_org(body: SwitchOrgRequest, ctx: Session) -> AccessTokenResponse:
    token = await service.switch_org(
        runtime=ctx.runtime,
        db=ctx.db,
        principal=ctx.principal,
        org_id=body.org_id,
        context=ctx.audit,
    )
    return AccessTokenResponse(
        access_token=token,
        expires_in=ctx.runtime.settings.access_token_ttl_seconds,
        org_id=body.org_id,
    )


@router.get("/me", openapi_extra=access("authenticated"))
async def me(ctx: Context) -> MeResponse:
    user = (await ctx.db.execute(select(User).where(User.id == ctx.principal.user_id))).scalar_one()
    memberships = await orgs.list_my_organizations(db=ctx.db, principal=ctx.principal)
    return MeResponse(
        user=UserOut(
            id=user.id,
            email=user.email,
            display_name=user.display_name,
            is_superuser=user.is_superuser,
        ),
        org_id=ctx.principal.org_id,
        role=ctx.principal.role,
        auth=ctx.principal.kind,
        memberships=[
            MembershipOut(org_id=m.org_id, name=m.name, slug=m.slug, role=m.role)
            for m in memberships
        ],
    )


def _key_out(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "role": key.role,
        "org_id": key.org_id,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    }


# API keys belong to an organization: these need a role in the current one (any role).
@router.get("/api-keys", openapi_extra=access("viewer", api_key=False))
async def list_api_keys(ctx: OrgSession) -> list[ApiKeyOut]:
    keys = await api_keys.list_api_keys(db=ctx.db, principal=ctx.principal)
    return [ApiKeyOut.model_validate(_key_out(k)) for k in keys]


@router.get("/api-keys/{key_id}", openapi_extra=access("viewer", api_key=False))
async def get_api_key(key_id: uuid.UUID, ctx: OrgSession) -> ApiKeyOut:
    key = await api_keys.get_api_key(db=ctx.db, principal=ctx.principal, key_id=key_id)
    return ApiKeyOut.model_validate(_key_out(key))


@router.post(
    "/api-keys",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=access("viewer", api_key=False),
    responses=located(201),
)
async def create_api_key(body: ApiKeyCreate, ctx: OrgSession, response: Response) -> ApiKeyCreated:
    key, plaintext = await api_keys.create_api_key(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        name=body.name,
        role=body.role,
        expires_in_days=body.expires_in_days,
    )
    set_location(response, f"/auth/api-keys/{key.id}")
    return ApiKeyCreated.model_validate({**_key_out(key), "key": plaintext})


@router.delete(
    "/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=access("viewer", api_key=False),
)
async def revoke_api_key(key_id: uuid.UUID, ctx: OrgSession) -> Response:
    await api_keys.revoke_api_key(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, key_id=key_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
