"""Feature flags. Organization admins read every flag with its state in their organization and
set or remove the organization's override; instance administrators (superusers) also create,
change and delete the global flags. docs/FLAGS.md"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import ValidationError
from starlette.responses import Response

from taskloom.auth.deps import RequestContext
from taskloom.errors import DomainError, Forbidden
from taskloom.flags import evaluation, service
from taskloom.flags.schemas import KEY_PATTERN, FlagCreate, FlagUpdate, OverrideSet
from taskloom.orgs.models import Role
from taskloom.web.errors import UiRoute
from taskloom.web.forms import FieldError, from_domain, from_validation, optional_text, text
from taskloom.web.rendering import redirect, render
from taskloom.web.session import Page, signed_in

router = APIRouter(prefix="/ui/admin/flags", route_class=UiRoute, include_in_schema=False)

KEY = KEY_PATTERN.strip("^$")  # for the form's pattern attribute
Key = Annotated[str, Path(pattern=KEY_PATTERN, max_length=100)]


def _require_access(page: Page) -> None:
    if not (page.principal.has_role(Role.ADMIN) or page.principal.is_superuser):
        raise Forbidden(
            "feature flags are managed by organization admins (overrides) and instance "
            "administrators (global flags)"
        )


def _invalidate_after_commit(ctx: RequestContext) -> None:
    """Every change starts a new evaluation-cache generation once committed (as in the API)."""
    redis, keys = ctx.runtime.redis, ctx.runtime.keys

    async def invalidate_flag_evaluations() -> None:
        await evaluation.invalidate(redis=redis, keys=keys)

    ctx.after_commit.append(invalidate_flag_evaluations)


async def _render(
    page: Page, *, status: int = 200, errors: list[FieldError] | None = None
) -> Response:
    flags = await service.list_flags(db=page.db)
    org_admin = page.principal.has_role(Role.ADMIN)
    states: dict[str, Any] = {}
    overrides: dict[str, list[Any]] = {}
    if org_admin:
        states = await evaluation.evaluate_for(
            redis=page.runtime.redis,
            keys=page.runtime.keys,
            db=page.db,
            principal=page.principal,
            wanted=None,
        )
        for flag in flags:
            overrides[flag.key] = await service.list_org_overrides(
                db=page.db, principal=page.principal, key=flag.key
            )
    return render(
        page,
        "admin/flags.html",
        status=status,
        title="Feature flags",
        flags=flags,
        states=states,
        overrides=overrides,
        org_admin=org_admin,
        superuser=page.principal.is_superuser,
        key_pattern=KEY,
        errors=errors or [],
    )


@router.get("")
async def flags(request: Request) -> Response:
    async with signed_in(request) as page:
        _require_access(page)
        return await _render(page)


async def _attempt(page: Page, change: Callable[[], Awaitable[None]]) -> Response | None:
    """Run a change; on refusal, the page again with the reason (nothing of it committed)."""
    try:
        async with page.db.begin_nested():
            await change()
    except ValidationError as invalid:
        return await _render(page, status=422, errors=from_validation(invalid))
    except DomainError as refused:
        return await _render(page, status=refused.status_code, errors=from_domain(refused))
    _invalidate_after_commit(page.signed_in)
    return None


@router.post("/{key}/override")
async def set_override(key: Key, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.ADMIN)

        async def change() -> None:
            body = OverrideSet.model_validate(
                {
                    "enabled": text(form, "enabled") == "true",
                    "reason": optional_text(form, "reason"),
                }
            )
            await service.set_org_override(
                db=page.db,
                principal=page.principal,
                context=page.audit,
                key=key,
                user_id=None,
                body=body,
            )

        if refused := await _attempt(page, change):
            return refused
    return redirect("/ui/admin/flags?notice=override-saved")


@router.post("/{key}/override/delete")
async def delete_override(key: Key, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.ADMIN)

        async def change() -> None:
            await service.delete_org_override(
                db=page.db, principal=page.principal, context=page.audit, key=key, user_id=None
            )

        if refused := await _attempt(page, change):
            return refused
    return redirect("/ui/admin/flags?notice=override-removed")


def _rollout(form: Any) -> int | None:
    raw = text(form, "rollout_percentage").strip()
    return int(raw) if raw.isdigit() else (None if not raw else -1)  # -1: refused by the schema


def _fields(form: Any) -> dict[str, Any]:
    """The fields the create and the edit forms share."""
    return {
        "description": optional_text(form, "description"),
        "default_enabled": text(form, "default_enabled") == "true",
        "rollout_percentage": _rollout(form),
    }


@router.post("")
async def create_flag(request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        service.require_superuser(page.principal)

        async def change() -> None:
            body = FlagCreate.model_validate({"key": text(form, "key").strip(), **_fields(form)})
            await service.create_flag(
                database=page.runtime.database,
                principal=page.principal,
                context=page.audit,
                body=body,
            )

        if refused := await _attempt(page, change):
            return refused
    return redirect("/ui/admin/flags?notice=flag-created")


@router.post("/{key}")
async def update_flag(key: Key, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        service.require_superuser(page.principal)

        async def change() -> None:
            body = FlagUpdate.model_validate(_fields(form))
            await service.update_flag(
                database=page.runtime.database,
                principal=page.principal,
                context=page.audit,
                key=key,
                body=body,
            )

        if refused := await _attempt(page, change):
            return refused
    return redirect("/ui/admin/flags?notice=flag-saved")


@router.post("/{key}/delete")
async def delete_flag(key: Key, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        service.require_superuser(page.principal)

        async def change() -> None:
            await service.delete_flag(
                database=page.runtime.database,
                principal=page.principal,
                context=page.audit,
                key=key,
            )

        if refused := await _attempt(page, change):
            return refused
    return redirect("/ui/admin/flags?notice=flag-deleted")
