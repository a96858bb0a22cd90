"""Templates (Jinja2, autoescaping every value), their filters, and the responses pages return."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from taskloom import __version__
from taskloom.web.forms import errors_for
from taskloom.web.session import Nav, Page

TEMPLATES = Path(__file__).parent / "templates"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

# Short confirmations shown after a form posted and redirected (by key: never text taken from
# the URL).
NOTICES = {
    "workflow-created": "Workflow created.",
    "workflow-saved": "Workflow saved.",
    "workflow-deleted": "Workflow deleted.",
    "workflow-enabled": "Workflow enabled: it can be run, and its schedules and triggers start it.",
    "workflow-disabled": "Workflow disabled: no schedule or trigger starts it until it is "
    "enabled again.",
    "schedule-created": "Schedule created.",
    "schedule-paused": "Schedule paused: it fires no ticks until it is resumed.",
    "schedule-resumed": "Schedule resumed from now (ticks missed while paused do not run).",
    "schedule-deleted": "Schedule deleted.",
    "trigger-created": "Trigger created.",
    "trigger-deleted": "Trigger deleted.",
    "version-restored": "Version restored: it is now the newest version, with its triggers and "
    "schedules.",
    "execution-cancelled": "Cancellation requested.",
    "execution-retried": "Execution queued again.",
    "execution-rerun": "Re-run queued: this new execution keeps the outputs of the steps "
    "upstream of the step it re-runs from.",
    "approval-approved": "Approved. The execution goes on.",
    "approval-rejected": "Rejected. The execution goes on with the rejection.",
    "org-switched": "Organization switched.",
    "password-changed": "Password changed. Your other sessions have been signed out.",
    "invitation-created": "Invitation created. The person sees it under Invitations once they "
    "sign in with that email address, and joins when they accept it.",
    "invitation-revoked": "Invitation revoked.",
    "invitation-accepted": "Invitation accepted: the organization is now in your organization "
    "list.",
    "invitation-declined": "Invitation declined.",
    "member-updated": "Role changed.",
    "member-removed": "Member removed.",
    "connection-created": "Connection created.",
    "connection-deleted": "Connection deleted.",
    "webhook-updated": "Webhook updated.",
    "webhook-deleted": "Webhook deleted.",
    "webhook-pinged": "Test ping queued; its delivery appears below.",
    "flag-created": "Flag created.",
    "flag-saved": "Flag saved.",
    "flag-deleted": "Flag deleted.",
    "override-saved": "Override saved.",
    "override-removed": "Override removed.",
    "sso-provider-created": "Provider added. Register its redirect URI at the provider, then map "
    "its groups to roles below.",
    "sso-provider-saved": "Provider saved.",
    "sso-provider-enabled": "Provider enabled: the sign-in page offers it.",
    "sso-provider-disabled": "Provider disabled: nobody signs in with it, and the sessions it "
    "started are signed out.",
    "sso-provider-deleted": "Provider deleted; the sessions it started are signed out.",
    "sso-mapping-created": "Group mapping added: it applies at each member's next sign-in.",
    "sso-mapping-deleted": "Group mapping deleted: a role only it granted is taken at the "
    "person's next sign-in.",
    "org-sso-saved": "Single sign-on setting saved.",
    "signed-out": "You are signed out.",
    "registered": "Welcome! Your account and organization are ready.",
}


def _pretty_json(value: Any) -> str:
    """Indented JSON as text (escaped by the template like any other value)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


def _when(value: datetime | float | None) -> str:
    """A moment in UTC; also from Unix seconds (what worker heartbeats record)."""
    if value is None:
        return "—"
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when_in(value: datetime | None, zone: str) -> str:
    """A moment on the wall clock of an IANA zone, with the zone's abbreviation."""
    if value is None:
        return "—"
    try:
        local = value.astimezone(ZoneInfo(zone))
    except (ZoneInfoNotFoundError, ValueError):
        return _when(value)
    return local.strftime("%Y-%m-%d %H:%M:%S %Z")


def _duration(started: datetime | None, finished: datetime | None) -> str:
    if started is None or finished is None:
        return "—"
    seconds = (finished - started).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template, whatever its extension
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty_json"] = _pretty_json
    env.filters["when"] = _when
    env.filters["when_in"] = _when_in
    env.globals["duration"] = _duration
    env.globals["errors_for"] = errors_for
    env.globals["TERMINAL"] = TERMINAL
    env.globals["version"] = __version__
    return env


ENV = _environment()


def _frame(request: Request, nav: Nav | None, csrf_token: str) -> dict[str, Any]:
    notice = NOTICES.get(request.query_params.get("notice", ""))
    return {
        "request": request,
        "path": request.url.path,
        "nav": nav,
        "csrf_token": csrf_token,
        "notice": notice,
        "refresh_seconds": None,
        "title": "Taskloom",
    }


def render(page: Page, template: str, *, status: int = 200, **values: Any) -> HTMLResponse:
    context = _frame(page.request, page.nav, page.csrf_token)
    context.update(values)
    html = ENV.get_template(template).render(context)
    return HTMLResponse(html, status_code=status)


def render_error(request: Request, *, status: int, title: str, message: str) -> HTMLResponse:
    """An error page; uses the frame of the signed-in person when it was built before the
    error (plain values only: the transaction has ended)."""
    nav: Nav | None = getattr(request.state, "ui_nav", None)
    context = _frame(request, nav, nav.csrf_token if nav else "")
    context.update(title=title, message=message, status=status)
    html = ENV.get_template("error.html").render(context)
    return HTMLResponse(html, status_code=status)


def with_query(request: Request, **params: str) -> str:
    """This page's path and query with `params` replaced (a relative link)."""
    url = request.url.include_query_params(**params)
    return f"{url.path}?{url.query}"


def redirect(url: str) -> RedirectResponse:
    """After a successful post: 303, so reloading the next page does not post again."""
    return RedirectResponse(url, status_code=303)
