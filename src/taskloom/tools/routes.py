"""/api/connections: an organization's tool and AI connections. Admins only: a connection holds
credentials that act on the organization's behalf in another system."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from taskloom.auth.access import access
from taskloom.auth.deps import Admin, RequestContext
from taskloom.breakers import BREAKERS
from taskloom.crypto import CredentialCipher
from taskloom.locations import located, set_location
from taskloom.tools import service
from taskloom.tools.schemas import (
    ConnectionCreate,
    ConnectionOut,
    ConnectionTestResult,
    ConnectionUpdate,
    ToolOut,
)

router = APIRouter(prefix="/api/connections", tags=["connections"])


def _cipher(ctx: RequestContext) -> CredentialCipher:
    return ctx.runtime.cipher


@router.get("", openapi_extra=access("admin"))
async def list_connections(ctx: Admin) -> list[ConnectionOut]:
    rows = await service.list_connections(db=ctx.db, principal=ctx.principal)
    return [service.to_out(row, _cipher(ctx)) for row in rows]


@router.post(
    "", status_code=status.HTTP_201_CREATED, openapi_extra=access("admin"), responses=located(201)
)
async def create_connection(
    body: ConnectionCreate, ctx: Admin, response: Response
) -> ConnectionOut:
    row = await service.create_connection(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, cipher=_cipher(ctx), body=body
    )
    set_location(response, f"/api/connections/{row.id}")
    return service.to_out(row, _cipher(ctx))


@router.get("/{connection_id}", openapi_extra=access("admin"))
async def get_connection(connection_id: uuid.UUID, ctx: Admin) -> ConnectionOut:
    row = await service.get_connection(db=ctx.db, connection_id=connection_id)
    return service.to_out(row, _cipher(ctx))


@router.patch("/{connection_id}", openapi_extra=access("admin"))
async def update_connection(
    connection_id: uuid.UUID, body: ConnectionUpdate, ctx: Admin
) -> ConnectionOut:
    row = await service.update_connection(
        db=ctx.db, context=ctx.audit, cipher=_cipher(ctx), connection_id=connection_id, body=body
    )
    # New credentials or URL: the breaker starts afresh (shared: for every process; per
    # process: this one's, and workers' close on their next successful trial), and this
    # process's pooled clients close (workers' no longer match the new fingerprint and idle
    # out: outbound_pool.py).
    await BREAKERS.reset(f"tool:{row.id}")
    await ctx.runtime.outbound.discard(owner=str(row.id))
    return service.to_out(row, _cipher(ctx))


@router.delete(
    "/{connection_id}", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=access("admin")
)
async def delete_connection(connection_id: uuid.UUID, ctx: Admin) -> Response:
    row = await service.delete_connection(db=ctx.db, context=ctx.audit, connection_id=connection_id)
    await BREAKERS.reset(f"tool:{row.id}")
    await ctx.runtime.outbound.discard(owner=str(row.id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{connection_id}/test", openapi_extra=access("admin"))
async def test_connection(connection_id: uuid.UUID, ctx: Admin) -> ConnectionTestResult:
    result = await service.check_connection(
        db=ctx.db,
        context=ctx.audit,
        settings=ctx.runtime.settings,
        cipher=_cipher(ctx),
        connection_id=connection_id,
    )
    return ConnectionTestResult.model_validate(result)


@router.get("/{connection_id}/tools", openapi_extra=access("admin"))
async def list_tools(connection_id: uuid.UUID, ctx: Admin) -> list[ToolOut]:
    row = await service.get_connection(db=ctx.db, connection_id=connection_id)
    tools = await service.list_tools(settings=ctx.runtime.settings, cipher=_cipher(ctx), row=row)
    return [
        ToolOut(
            name=t.name,
            description=t.description,
            read_only=t.read_only,
            input_schema=t.input_schema,
        )
        for t in tools
    ]
