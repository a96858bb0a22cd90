"""/api/secrets: an organization's secrets. Members may list them (names, descriptions, allowed
hosts: what a workflow may use); only admins write. A value is never returned."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from taskloom.auth.access import access
from taskloom.auth.deps import Admin, Member
from taskloom.locations import located, set_location
from taskloom.secrets import service
from taskloom.secrets.schemas import NAME_PATTERN, SecretCreate, SecretOut, SecretReplace

router = APIRouter(prefix="/api/secrets", tags=["secrets"])

SecretName = Annotated[str, Path(pattern=NAME_PATTERN)]


@router.get("", openapi_extra=access("member"))
async def list_secrets(ctx: Member) -> list[SecretOut]:
    rows = await service.list_secrets(db=ctx.db, principal=ctx.principal)
    return [service.to_out(row) for row in rows]


@router.post(
    "", status_code=status.HTTP_201_CREATED, openapi_extra=access("admin"), responses=located(201)
)
async def create_secret(body: SecretCreate, ctx: Admin, response: Response) -> SecretOut:
    row = await service.create_secret(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        cipher=ctx.runtime.cipher,
        body=body,
    )
    set_location(response, f"/api/secrets/{row.name}")
    return service.to_out(row)


@router.get("/{secret_name}", openapi_extra=access("member"))
async def get_secret(secret_name: SecretName, ctx: Member) -> SecretOut:
    row = await service.get_secret(db=ctx.db, principal=ctx.principal, name=secret_name)
    return service.to_out(row)


@router.put("/{secret_name}", openapi_extra=access("admin"))
async def replace_secret(secret_name: SecretName, body: SecretReplace, ctx: Admin) -> SecretOut:
    row = await service.replace_secret(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        cipher=ctx.runtime.cipher,
        name=secret_name,
        body=body,
    )
    return service.to_out(row)


@router.delete(
    "/{secret_name}", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=access("admin")
)
async def delete_secret(secret_name: SecretName, ctx: Admin) -> Response:
    await service.delete_secret(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, name=secret_name
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
