"""The UI's router: every page area, the stylesheet, `/` → `/ui/`, and an HTML "not found" for
any other /ui address. Nothing here is in the OpenAPI document (`include_in_schema=False`):
these are pages, not API operations, and their cookies authenticate nothing else."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, RedirectResponse, Response

from taskloom.web.errors import UiRoute
from taskloom.web.pages import (
    account,
    approvals,
    audit,
    connections,
    executions,
    flags,
    health,
    invitations,
    members,
    password,
    privacy,
    sso,
    triggers,
    versions,
    webhooks,
    workflows,
)
from taskloom.web.rendering import render_error

STATIC = Path(__file__).parent / "static"
# Served by name from a fixed list: no path from the request ever reaches the file system.
STATIC_FILES = {
    "app.css": "text/css; charset=utf-8",
    "copy.js": "text/javascript; charset=utf-8",
    "execution.js": "text/javascript; charset=utf-8",
}

_assets = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)
_fallback = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)
_root = APIRouter(include_in_schema=False)


def _not_found(request: Request) -> Response:
    return render_error(request, status=404, title="Not found", message="There is no such page.")


@_assets.get("/static/{name}")
async def static(name: str, request: Request) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        return _not_found(request)
    return FileResponse(
        STATIC / name, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"}
    )


@_fallback.get("/{rest:path}")
async def not_found(rest: str, request: Request) -> Response:
    return _not_found(request)


@_root.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


AREAS = (
    account,
    workflows,
    triggers,
    versions,
    executions,
    approvals,
    audit,
    password,
    privacy,
    invitations,
    members,
    connections,
    webhooks,
    flags,
    sso,
    health,
)

router = APIRouter(include_in_schema=False)
for area in AREAS:
    router.include_router(area.router)
router.include_router(_assets)
router.include_router(_root)
router.include_router(_fallback)  # last: only what no page matched
