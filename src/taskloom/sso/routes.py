"""/api/admin/sso: sign-in providers and their group mappings (instance administrators).
docs/SSO.md"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response, status

from taskloom.auth import revocation
from taskloom.auth.access import access
from taskloom.auth.deps import Context, RequestContext
from taskloom.locations import located, set_location
from taskloom.sso import providers
from taskloom.sso.models import SLUG_PATTERN, SsoGroupMapping, SsoProvider
from taskloom.sso.schemas import (
    MappingCreate,
    MappingOut,
    ProviderCreate,
    ProviderOut,
    ProviderUpdate,
)

router = APIRouter(prefix="/api/admin/sso", tags=["sso"])

Slug = Annotated[str, Path(pattern=SLUG_PATTERN, max_length=63)]


async def _instance_admin(ctx: Context) -> RequestContext:
    providers.require_instance_admin(ctx.principal)
    return ctx


InstanceAdmin = Annotated[RequestContext, Depends(_instance_admin)]
# Instance administration needs a signed-in person: an API key never carries it.
SUPERUSER = access("superuser", api_key=False)


def _out(ctx: RequestContext, request: Request, provider: SsoProvider) -> ProviderOut:
    return providers.provider_out(
        provider, base_url=str(request.base_url), settings=ctx.runtime.settings
    )


def _mapping_out(mapping: SsoGroupMapping) -> MappingOut:
    return MappingOut(
        id=mapping.id,
        group=mapping.group_name,
        org_id=mapping.org_id,
        role=mapping.role,
        created_at=mapping.created_at,
    )


@router.post(
    "/providers",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=SUPERUSER,
    responses=located(201),
)
async def create_sso_provider(
    body: ProviderCreate, ctx: InstanceAdmin, request: Request, response: Response
) -> ProviderOut:
    runtime = ctx.runtime
    provider = await providers.create_provider(
        database=runtime.database,
        cipher=runtime.cipher,
        settings=runtime.settings,
        principal=ctx.principal,
        context=ctx.audit,
        body=body,
    )
    set_location(response, f"/api/admin/sso/providers/{provider.slug}")
    return _out(ctx, request, provider)


@router.get("/providers", openapi_extra=SUPERUSER)
async def list_sso_providers(ctx: InstanceAdmin, request: Request) -> list[ProviderOut]:
    found = await providers.list_providers(database=ctx.runtime.database, principal=ctx.principal)
    return [_out(ctx, request, p) for p in found]


@router.get("/providers/{slug}", openapi_extra=SUPERUSER)
async def get_sso_provider(slug: Slug, ctx: InstanceAdmin, request: Request) -> ProviderOut:
    provider = await providers.get_provider(
        database=ctx.runtime.database, principal=ctx.principal, slug=slug
    )
    return _out(ctx, request, provider)


@router.patch("/providers/{slug}", openapi_extra=SUPERUSER)
async def update_sso_provider(
    slug: Slug, body: ProviderUpdate, ctx: InstanceAdmin, request: Request
) -> ProviderOut:
    runtime = ctx.runtime
    provider, signed_out = await providers.update_provider(
        database=runtime.database,
        cipher=runtime.cipher,
        settings=runtime.settings,
        principal=ctx.principal,
        context=ctx.audit,
        slug=slug,
        body=body,
    )
    await revocation.publish(runtime, signed_out)
    return _out(ctx, request, provider)


@router.delete("/providers/{slug}", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=SUPERUSER)
async def delete_sso_provider(slug: Slug, ctx: InstanceAdmin) -> Response:
    signed_out = await providers.delete_provider(
        database=ctx.runtime.database, principal=ctx.principal, context=ctx.audit, slug=slug
    )
    await revocation.publish(ctx.runtime, signed_out)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/providers/{slug}/mappings",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=SUPERUSER,
    responses=located(201),
)
async def create_sso_mapping(
    slug: Slug, body: MappingCreate, ctx: InstanceAdmin, response: Response
) -> MappingOut:
    mapping = await providers.create_mapping(
        database=ctx.runtime.database,
        principal=ctx.principal,
        context=ctx.audit,
        slug=slug,
        body=body,
    )
    set_location(response, f"/api/admin/sso/providers/{slug}/mappings")
    return _mapping_out(mapping)


@router.get("/providers/{slug}/mappings", openapi_extra=SUPERUSER)
async def list_sso_mappings(slug: Slug, ctx: InstanceAdmin) -> list[MappingOut]:
    found = await providers.list_mappings(
        database=ctx.runtime.database, principal=ctx.principal, slug=slug
    )
    return [_mapping_out(m) for m in found]


@router.delete(
    "/providers/{slug}/mappings/{mapping_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=SUPERUSER,
)
async def delete_sso_mapping(slug: Slug, mapping_id: uuid.UUID, ctx: InstanceAdmin) -> Response:
    await providers.delete_mapping(
        database=ctx.runtime.database,
        principal=ctx.principal,
        context=ctx.audit,
        slug=slug,
        mapping_id=mapping_id,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
