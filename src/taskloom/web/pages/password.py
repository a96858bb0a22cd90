"""Change your password: the current one and the new one (twice). The same service as
POST /auth/password: a wrong current password counts as a failed sign-in, and the person's other
sessions are signed out (this browser stays signed in)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from taskloom.auth import password_changes
from taskloom.auth.schemas import PasswordChangeRequest
from taskloom.errors import DomainError
from taskloom.web.errors import UiRoute
from taskloom.web.forms import FieldError, from_validation, text
from taskloom.web.rendering import redirect, render
from taskloom.web.session import Page, signed_in

router = APIRouter(prefix="/ui/password", route_class=UiRoute, include_in_schema=False)

# Which form field a refusal of the service concerns.
_FIELDS = {"invalid_current_password": "current_password", "weak_password": "new_password"}


def _render(page: Page, *, status: int = 200, errors: list[FieldError] | None = None) -> Response:
    return render(
        page,
        "password.html",
        status=status,
        title="Change password",
        min_length=page.runtime.settings.password_min_length,
        errors=errors or [],
    )


@router.get("")
async def password_form(request: Request) -> Response:
    async with signed_in(request) as page:
        return _render(page)


@router.post("")
async def change_password(request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        if text(form, "new_password") != text(form, "confirm_password"):
            errors = [FieldError("confirm_password", "the two new passwords differ")]
            return _render(page, status=422, errors=errors)
        try:
            body = PasswordChangeRequest(
                current_password=text(form, "current_password"),
                new_password=text(form, "new_password"),
            )
        except ValidationError as invalid:
            return _render(page, status=422, errors=from_validation(invalid))
        try:
            await password_changes.change_own_password(
                runtime=page.runtime,
                db=page.db,
                principal=page.principal,
                current_password=body.current_password,
                new_password=body.new_password,
                context=page.audit,
            )
        except DomainError as refused:
            field = _FIELDS.get(refused.code, "")
            return _render(
                page, status=refused.status_code, errors=[FieldError(field, refused.message)]
            )
    return redirect("/ui/password?notice=password-changed")
