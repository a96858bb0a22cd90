"""Tool and AI connections of the current organization (admins): list, create, test, delete.
Credentials go in and never come back: the page shows which fields are set."""

from __future__ import annotations

import uuid
from typing import Any, get_args

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from taskloom.breakers import BREAKERS
from taskloom.errors import DomainError
from taskloom.orgs.models import Role
from taskloom.tools import service
from taskloom.tools.schemas import ConnectionCreate, Provider
from taskloom.web.errors import UiRoute
from taskloom.web.forms import (
    FieldError,
    FormProblem,
    from_domain,
    from_validation,
    json_field,
    optional_text,
    text,
)
from taskloom.web.rendering import redirect, render
from taskloom.web.session import Page, signed_in

router = APIRouter(prefix="/ui/admin/connections", route_class=UiRoute, include_in_schema=False)

PROVIDERS: tuple[str, ...] = get_args(Provider)


async def _render(
    page: Page,
    *,
    status: int = 200,
    errors: list[FieldError] | None = None,
    values: dict[str, str] | None = None,
    tested: dict[str, Any] | None = None,
) -> Response:
    rows = await service.list_connections(db=page.db, principal=page.principal)
    cipher = page.runtime.cipher
    return render(
        page,
        "admin/connections.html",
        status=status,
        title="Connections",
        connections=[service.to_out(row, cipher) for row in rows],
        providers=PROVIDERS,
        errors=errors or [],
        values=values or {"provider": "github", "name": "", "base_url": "", "config": ""},
        tested=tested,
    )


@router.get("")
async def connections(request: Request) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.ADMIN)
        return await _render(page)


@router.post("")
async def create_connection(request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.ADMIN)
        values = {
            "provider": text(form, "provider"),
            "name": text(form, "name").strip(),
            "base_url": text(form, "base_url").strip(),
            "config": text(form, "config"),
        }
        try:
            body = ConnectionCreate.model_validate(
                {
                    "provider": values["provider"],
                    "name": values["name"],
                    "base_url": optional_text(form, "base_url"),
                    "credentials": json_field(form, "credentials", default={}),
                    "config": json_field(form, "config", default={}),
                }
            )
            async with page.db.begin_nested():
                await service.create_connection(
                    db=page.db,
                    principal=page.principal,
                    context=page.audit,
                    cipher=page.runtime.cipher,
                    body=body,
                )
        except FormProblem as problem:
            return await _render(page, status=422, errors=problem.errors, values=values)
        except ValidationError as invalid:
            return await _render(page, status=422, errors=from_validation(invalid), values=values)
        except DomainError as refused:
            errors = from_domain(refused)
            return await _render(page, status=refused.status_code, errors=errors, values=values)
    return redirect("/ui/admin/connections?notice=connection-created")


@router.post("/{connection_id}/test")
async def test_connection(connection_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.ADMIN)
        result = await service.check_connection(
            db=page.db,
            context=page.audit,
            settings=page.runtime.settings,
            cipher=page.runtime.cipher,
            connection_id=connection_id,
        )
        return await _render(page, tested={"id": connection_id, **result})


@router.post("/{connection_id}/delete")
async def delete_connection(connection_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.ADMIN)
        row = await service.delete_connection(
            db=page.db, context=page.audit, connection_id=connection_id
        )
        await BREAKERS.reset(f"tool:{row.id}")  # as the API does: the breaker goes too
    return redirect("/ui/admin/connections?notice=connection-deleted")
