"""/api/flags (members evaluate; org admins override in their organization) and
/api/admin/flags (instance administrators: global flags, and overrides anywhere). docs/FLAGS.md"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status

from taskloom.auth.access import access
from taskloom.auth.deps import Admin, Context, RequestContext, Viewer
from taskloom.flags import evaluation, service
from taskloom.flags.schemas import (
    KEY_PATTERN,
    Evaluations,
    FlagCreate,
    FlagOut,
    FlagState,
    FlagUpdate,
    OverrideOut,
    OverrideSet,
    parse_keys,
)
from taskloom.locations import located, set_location

router = APIRouter(tags=["flags"])

Key = Annotated[str, Path(pattern=KEY_PATTERN, max_length=100)]


async def _instance_admin(ctx: Context) -> RequestContext:
    service.require_superuser(ctx.principal)
    return ctx


InstanceAdmin = Annotated[RequestContext, Depends(_instance_admin)]
# Instance administration needs a signed-in person: an API key never carries it.
SUPERUSER = access("superuser", api_key=False)


def _invalidate_after_commit(ctx: RequestContext) -> None:
    """Every change starts a new cache generation once it is committed."""
    redis, keys = ctx.runtime.redis, ctx.runtime.keys

    async def invalidate_flag_evaluations() -> None:
        await evaluation.invalidate(redis=redis, keys=keys)

    ctx.after_commit.append(invalidate_flag_evaluations)


def _no_content() -> Response:
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- evaluation ----------------------------------------------------------------------------------


@router.get("/api/flags", openapi_extra=access("viewer"))
async def evaluate_flags(
    ctx: Viewer, keys: Annotated[str | None, Query(max_length=10_200)] = None
) -> Evaluations:
    """The caller's flags in the current organization: `?keys=a,b` (at most 100), or all."""
    decisions = await evaluation.evaluate_for(
        redis=ctx.runtime.redis,
        keys=ctx.runtime.keys,
        db=ctx.db,
        principal=ctx.principal,
        wanted=parse_keys(keys),
    )
    return Evaluations(
        flags={key: FlagState(enabled=d.enabled, source=d.source) for key, d in decisions.items()}
    )


# --- overrides in the current organization (org admins) ------------------------------------------


@router.get("/api/flags/{key}/overrides", openapi_extra=access("admin"))
async def list_org_overrides(key: Key, ctx: Admin) -> list[OverrideOut]:
    return await service.list_org_overrides(db=ctx.db, principal=ctx.principal, key=key)


@router.put("/api/flags/{key}/overrides/org", openapi_extra=access("admin"))
async def set_org_override(key: Key, body: OverrideSet, ctx: Admin) -> OverrideOut:
    out = await service.set_org_override(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, key=key, user_id=None, body=body
    )
    _invalidate_after_commit(ctx)
    return out


@router.delete(
    "/api/flags/{key}/overrides/org",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=access("admin"),
)
async def delete_org_override(key: Key, ctx: Admin) -> Response:
    await service.delete_org_override(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, key=key, user_id=None
    )
    _invalidate_after_commit(ctx)
    return _no_content()


@router.put("/api/flags/{key}/overrides/users/{user_id}", openapi_extra=access("admin"))
async def set_member_override(
    key: Key, user_id: uuid.UUID, body: OverrideSet, ctx: Admin
) -> OverrideOut:
    out = await service.set_org_override(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, key=key, user_id=user_id, body=body
    )
    _invalidate_after_commit(ctx)
    return out


@router.delete(
    "/api/flags/{key}/overrides/users/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=access("admin"),
)
async def delete_member_override(key: Key, user_id: uuid.UUID, ctx: Admin) -> Response:
    await service.delete_org_override(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, key=key, user_id=user_id
    )
    _invalidate_after_commit(ctx)
    return _no_content()


# --- global flags (instance administrators) ------------------------------------------------------


@router.get("/api/admin/flags", openapi_extra=SUPERUSER)
async def list_flags(ctx: InstanceAdmin) -> list[FlagOut]:
    return [FlagOut.model_validate(f) for f in await service.list_flags(db=ctx.db)]


@router.post(
    "/api/admin/flags",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=SUPERUSER,
    responses=located(201),
)
async def create_flag(body: FlagCreate, ctx: InstanceAdmin, response: Response) -> FlagOut:
    flag = await service.create_flag(
        database=ctx.runtime.database, principal=ctx.principal, context=ctx.audit, body=body
    )
    _invalidate_after_commit(ctx)
    set_location(response, f"/api/admin/flags/{flag.key}")
    return FlagOut.model_validate(flag)


@router.get("/api/admin/flags/{key}", openapi_extra=SUPERUSER)
async def get_flag(key: Key, ctx: InstanceAdmin) -> FlagOut:
    return FlagOut.model_validate(await service.get_flag(db=ctx.db, key=key))


@router.patch("/api/admin/flags/{key}", openapi_extra=SUPERUSER)
async def update_flag(key: Key, body: FlagUpdate, ctx: InstanceAdmin) -> FlagOut:
    flag = await service.update_flag(
        database=ctx.runtime.database,
        principal=ctx.principal,
        context=ctx.audit,
        key=key,
        body=body,
    )
    _invalidate_after_commit(ctx)
    return FlagOut.model_validate(flag)


@router.delete(
    "/api/admin/flags/{key}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=SUPERUSER,
)
async def delete_flag(key: Key, ctx: InstanceAdmin) -> Response:
    await service.delete_flag(
        database=ctx.runtime.database, principal=ctx.principal, context=ctx.audit, key=key
    )
    _invalidate_after_commit(ctx)
    return _no_content()


# --- overrides anywhere (instance administrators) ------------------------------------------------


@router.get("/api/admin/flags/{key}/overrides", openapi_extra=SUPERUSER)
async def list_all_overrides(key: Key, ctx: InstanceAdmin) -> list[OverrideOut]:
    return await service.list_all_overrides(
        database=ctx.runtime.database, principal=ctx.principal, key=key
    )


async def _admin_set(
    ctx: RequestContext,
    key: str,
    body: OverrideSet,
    *,
    org_id: uuid.UUID | None,
    user_id: uuid.UUID | None,
) -> OverrideOut:
    out = await service.admin_set_override(
        database=ctx.runtime.database,
        principal=ctx.principal,
        context=ctx.audit,
        key=key,
        org_id=org_id,
        user_id=user_id,
        body=body,
    )
    _invalidate_after_commit(ctx)
    return out


@router.put(
    "/api/admin/flags/{key}/overrides/orgs/{org_id}",
    openapi_extra=SUPERUSER,
)
async def admin_set_org_override(
    key: Key, org_id: uuid.UUID, body: OverrideSet, ctx: InstanceAdmin
) -> OverrideOut:
    return await _admin_set(ctx, key, body, org_id=org_id, user_id=None)


@router.put(
    "/api/admin/flags/{key}/overrides/orgs/{org_id}/users/{user_id}",
    openapi_extra=SUPERUSER,
)
async def admin_set_member_override(
    key: Key, org_id: uuid.UUID, user_id: uuid.UUID, body: OverrideSet, ctx: InstanceAdmin
) -> OverrideOut:
    return await _admin_set(ctx, key, body, org_id=org_id, user_id=user_id)


@router.put(
    "/api/admin/flags/{key}/overrides/users/{user_id}",
    openapi_extra=SUPERUSER,
)
async def admin_set_user_override(
    key: Key, user_id: uuid.UUID, body: OverrideSet, ctx: InstanceAdmin
) -> OverrideOut:
    """A user override that applies in every organization the user acts in."""
    return await _admin_set(ctx, key, body, org_id=None, user_id=user_id)


@router.delete(
    "/api/admin/flags/{key}/overrides/{override_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=SUPERUSER,
)
async def admin_delete_override(key: Key, override_id: uuid.UUID, ctx: InstanceAdmin) -> Response:
    await service.admin_delete_override(
        database=ctx.runtime.database,
        principal=ctx.principal,
        context=ctx.audit,
        key=key,
        override_id=override_id,
    )
    _invalidate_after_commit(ctx)
    return _no_content()
