"""Single sign-on providers and their group mappings (instance administrators): list, add,
edit, enable or disable, delete; map a provider's groups to roles in organizations. Every change
goes through sso/providers.py, as /api/admin/sso does. The client secret goes in and never
comes back. docs/SSO.md"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.responses import Response

from taskloom.auth import revocation
from taskloom.errors import DomainError
from taskloom.sso import providers
from taskloom.sso.models import MAPPABLE_ROLES, SLUG_PATTERN, SsoProvider
from taskloom.sso.schemas import DEFAULT_ALGORITHMS, MappingCreate, ProviderCreate, ProviderUpdate
from taskloom.web.errors import UiRoute
from taskloom.web.forms import FieldError, from_domain, from_validation, text
from taskloom.web.rendering import redirect, render
from taskloom.web.session import Page, signed_in

router = APIRouter(prefix="/ui/admin/sso", route_class=UiRoute, include_in_schema=False)

Slug = Annotated[str, Path(pattern=SLUG_PATTERN, max_length=63)]
SLUG = SLUG_PATTERN.strip("^$")  # for the form's pattern attribute
_TEXT_FIELDS = (
    "slug",
    "display_name",
    "issuer",
    "client_id",
    "scopes",
    "groups_claim",
    "email_verified_claim",
    "verified_email_domains",
    "algorithms",
)
_NEW: dict[str, Any] = {
    **dict.fromkeys(_TEXT_FIELDS, ""),
    "scopes": "openid email profile",
    "email_verified_claim": "email_verified",
    "algorithms": " ".join(DEFAULT_ALGORITHMS),
    "enabled": True,
    "jit": False,
}
# A service's message that names one field ("body.role: …") is shown next to that field.
_NAMED_FIELD = re.compile(r"^body\.([a-z_]+): (.+)$", re.DOTALL)


@dataclass(frozen=True)
class ProviderRow:
    provider: SsoProvider
    redirect_uri: str
    mappings: int


@dataclass(frozen=True)
class MappingRow:
    id: uuid.UUID
    group: str
    org_id: uuid.UUID
    org_name: str | None
    role: str


def _redirect_uri(page: Page, slug: str) -> str:
    """As the API computes it: PUBLIC_URL's, else this request's base URL."""
    return providers.redirect_uri(page.runtime.settings, str(page.request.base_url), slug)


def _errors(refused: DomainError) -> list[FieldError]:
    found = from_domain(refused)
    if len(found) == 1 and not found[0].field:
        named = _NAMED_FIELD.match(found[0].message)
        if named:
            return [FieldError(named.group(1), named.group(2))]
    return found


def _words(value: str) -> list[str]:
    """A list typed as words separated by spaces or commas."""
    return value.replace(",", " ").split()


def _posted(form: FormData) -> dict[str, Any]:
    """The provider form's values as typed (shown again on refusal; never the secret)."""
    values: dict[str, Any] = {name: text(form, name).strip() for name in _TEXT_FIELDS}
    values["enabled"] = text(form, "enabled") == "true"
    values["jit"] = text(form, "jit") == "true"
    return values


def _shown(provider: SsoProvider) -> dict[str, Any]:
    return {
        "slug": provider.slug,
        "display_name": provider.display_name,
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "scopes": " ".join(provider.scopes),
        "groups_claim": provider.groups_claim or "",
        "email_verified_claim": provider.email_verified_claim,
        "verified_email_domains": " ".join(provider.verified_email_domains),
        "algorithms": " ".join(provider.algorithms),
        "enabled": provider.enabled,
        "jit": provider.jit,
    }


def _fields(values: dict[str, Any]) -> dict[str, Any]:
    """The body fields the add and the edit forms share (blank claim: no groups; blank
    e-mail-verified claim or algorithms: the defaults)."""
    return {
        "display_name": values["display_name"],
        "issuer": values["issuer"],
        "client_id": values["client_id"],
        "scopes": _words(values["scopes"]),
        "groups_claim": values["groups_claim"] or None,
        "email_verified_claim": values["email_verified_claim"] or "email_verified",
        "verified_email_domains": _words(values["verified_email_domains"]),
        "algorithms": _words(values["algorithms"]) or list(DEFAULT_ALGORITHMS),
        "enabled": values["enabled"],
        "jit": values["jit"],
    }


# --- the list and the add form -------------------------------------------------------------------


async def _render_list(
    page: Page,
    *,
    status: int = 200,
    errors: list[FieldError] | None = None,
    values: dict[str, Any] | None = None,
) -> Response:
    database, principal = page.runtime.database, page.principal
    rows = []
    for provider in await providers.list_providers(database=database, principal=principal):
        mappings = await providers.list_mappings(
            database=database, principal=principal, slug=provider.slug
        )
        rows.append(ProviderRow(provider, _redirect_uri(page, provider.slug), len(mappings)))
    return render(
        page,
        "admin/sso.html",
        status=status,
        title="Single sign-on",
        providers=rows,
        callback_example=_redirect_uri(page, "<slug>"),
        slug_pattern=SLUG,
        errors=errors or [],
        values=values or _NEW,
    )


@router.get("")
async def sso_providers(request: Request) -> Response:
    async with signed_in(request) as page:
        providers.require_instance_admin(page.principal)
        return await _render_list(page)


@router.post("")
async def create_provider(request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        providers.require_instance_admin(page.principal)
        values = _posted(form)
        runtime = page.runtime
        try:
            body = ProviderCreate.model_validate(
                {
                    "slug": values["slug"],
                    "client_secret": text(form, "client_secret"),
                    **_fields(values),
                }
            )
            provider = await providers.create_provider(
                database=runtime.database,
                cipher=runtime.cipher,
                settings=runtime.settings,
                principal=page.principal,
                context=page.audit,
                body=body,
            )
        except ValidationError as invalid:
            errors = from_validation(invalid)
            return await _render_list(page, status=422, errors=errors, values=values)
        except DomainError as refused:
            errors = _errors(refused)
            return await _render_list(
                page, status=refused.status_code, errors=errors, values=values
            )
    return redirect(f"/ui/admin/sso/{provider.slug}?notice=sso-provider-created")


# --- one provider: edit, enable or disable, delete, mappings -------------------------------------


async def _render_provider(
    page: Page,
    slug: str,
    *,
    status: int = 200,
    errors: list[FieldError] | None = None,
    values: dict[str, Any] | None = None,
    mapping: dict[str, str] | None = None,
) -> Response:
    database, principal = page.runtime.database, page.principal
    provider = await providers.get_provider(database=database, principal=principal, slug=slug)
    found = await providers.list_mappings(database=database, principal=principal, slug=slug)
    names = await providers.organization_names(
        database=database, principal=principal, org_ids={m.org_id for m in found}
    )
    return render(
        page,
        "admin/sso_provider.html",
        status=status,
        title=f"Single sign-on: {provider.display_name}",
        provider=provider,
        redirect_uri=_redirect_uri(page, provider.slug),
        mappings=[
            MappingRow(m.id, m.group_name, m.org_id, names.get(m.org_id), m.role) for m in found
        ],
        roles=MAPPABLE_ROLES,
        errors=errors or [],
        values=values or _shown(provider),
        mapping=mapping or {"group": "", "org_id": "", "role": "member"},
    )


@router.get("/{slug}")
async def sso_provider(slug: Slug, request: Request) -> Response:
    async with signed_in(request) as page:
        providers.require_instance_admin(page.principal)
        return await _render_provider(page, slug)


async def _update(page: Page, slug: str, body: ProviderUpdate) -> None:
    """As PATCH /api/admin/sso/providers/{slug}: disabling signs out the provider's sessions,
    and their revocation reaches every process at once."""
    runtime = page.runtime
    _, signed_out = await providers.update_provider(
        database=runtime.database,
        cipher=runtime.cipher,
        settings=runtime.settings,
        principal=page.principal,
        context=page.audit,
        slug=slug,
        body=body,
    )
    await revocation.publish(runtime, signed_out)


@router.post("/{slug}")
async def update_provider(slug: Slug, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        providers.require_instance_admin(page.principal)
        values = {**_posted(form), "slug": slug}
        secret = text(form, "client_secret")  # left empty: the stored one stays
        try:
            body = ProviderUpdate.model_validate(
                {**_fields(values), **({"client_secret": secret} if secret else {})}
            )
            await _update(page, slug, body)
        except ValidationError as invalid:
            errors = from_validation(invalid)
            return await _render_provider(page, slug, status=422, errors=errors, values=values)
        except DomainError as refused:
            errors = _errors(refused)
            return await _render_provider(
                page, slug, status=refused.status_code, errors=errors, values=values
            )
    return redirect(f"/ui/admin/sso/{slug}?notice=sso-provider-saved")


@router.post("/{slug}/enabled")
async def enable_provider(slug: Slug, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        providers.require_instance_admin(page.principal)
        enabled = text(form, "enabled") == "true"
        await _update(page, slug, ProviderUpdate(enabled=enabled))
    notice = "sso-provider-enabled" if enabled else "sso-provider-disabled"
    return redirect(f"/ui/admin/sso/{slug}?notice={notice}")


@router.post("/{slug}/delete")
async def delete_provider(slug: Slug, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        providers.require_instance_admin(page.principal)
        if text(form, "confirm").strip() != slug:
            errors = [FieldError("confirm", f"type {slug} to confirm the deletion")]
            return await _render_provider(page, slug, status=422, errors=errors)
        runtime = page.runtime
        signed_out = await providers.delete_provider(
            database=runtime.database, principal=page.principal, context=page.audit, slug=slug
        )
        await revocation.publish(runtime, signed_out)
    return redirect("/ui/admin/sso?notice=sso-provider-deleted")


@router.post("/{slug}/mappings")
async def create_mapping(slug: Slug, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        providers.require_instance_admin(page.principal)
        mapping = {name: text(form, name).strip() for name in ("group", "org_id", "role")}
        try:
            body = MappingCreate.model_validate(mapping)
            await providers.create_mapping(
                database=page.runtime.database,
                principal=page.principal,
                context=page.audit,
                slug=slug,
                body=body,
            )
        except ValidationError as invalid:
            errors = from_validation(invalid)
            return await _render_provider(page, slug, status=422, errors=errors, mapping=mapping)
        except DomainError as refused:
            errors = _errors(refused)
            return await _render_provider(
                page, slug, status=refused.status_code, errors=errors, mapping=mapping
            )
    return redirect(f"/ui/admin/sso/{slug}?notice=sso-mapping-created")


@router.post("/{slug}/mappings/{mapping_id}/delete")
async def delete_mapping(slug: Slug, mapping_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        providers.require_instance_admin(page.principal)
        await providers.delete_mapping(
            database=page.runtime.database,
            principal=page.principal,
            context=page.audit,
            slug=slug,
            mapping_id=mapping_id,
        )
    return redirect(f"/ui/admin/sso/{slug}?notice=sso-mapping-deleted")
