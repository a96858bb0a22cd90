"""/api/workflows/{id}/versions: viewers read the history and its diffs, members restore (a
restore that touches a webhook trigger needs an admin, as webhook triggers do)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response, status

from taskloom.auth.access import access
from taskloom.auth.deps import Member, Viewer
from taskloom.locations import located, set_location
from taskloom.triggers.service import hook_url
from taskloom.workflows import versions
from taskloom.workflows.restore import restore_version
from taskloom.workflows.schemas import (
    RecreatedSecret,
    RestoreOut,
    RestoreRequest,
    SkippedTrigger,
    VersionDiff,
    VersionOut,
    VersionPage,
    VersionSummary,
)

router = APIRouter(prefix="/api", tags=["workflows"])

Number = Annotated[int, Path(ge=1, le=2_147_483_647, description="A version number")]


@router.get("/workflows/{workflow_id}/versions", openapi_extra=access("viewer"))
async def list_workflow_versions(
    workflow_id: uuid.UUID,
    ctx: Viewer,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=versions.MAX_PAGE)] = 50,
) -> VersionPage:
    """Newest first."""
    items, next_cursor = await versions.list_versions(
        db=ctx.db, workflow_id=workflow_id, cursor=cursor, limit=limit
    )
    return VersionPage(
        items=[VersionSummary.model_validate(v) for v in items], next_cursor=next_cursor
    )


@router.get("/workflows/{workflow_id}/versions/{version}", openapi_extra=access("viewer"))
async def get_workflow_version(workflow_id: uuid.UUID, version: Number, ctx: Viewer) -> VersionOut:
    found = await versions.get_version(db=ctx.db, workflow_id=workflow_id, number=version)
    return VersionOut.model_validate(found)


@router.get("/workflows/{workflow_id}/versions/{version}/diff", openapi_extra=access("viewer"))
async def diff_workflow_versions(
    workflow_id: uuid.UUID,
    version: Number,
    ctx: Viewer,
    against: Annotated[
        int | None,
        Query(ge=1, le=2_147_483_647, description="Default: the version before (1: nothing)"),
    ] = None,
) -> VersionDiff:
    """What changed from version `against` to version `version`."""
    old, new, text = await versions.diff(
        db=ctx.db, workflow_id=workflow_id, number=version, against=against
    )
    return VersionDiff(from_version=old.number if old else None, to_version=new.number, diff=text)


@router.post(
    "/workflows/{workflow_id}/versions/{version}/restore",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=access("member"),
    responses={**located(201), **versions.PRECONDITION_FAILED},
)
async def restore_workflow_version(
    workflow_id: uuid.UUID,
    version: Number,
    ctx: Member,
    response: Response,
    body: RestoreRequest | None = None,
    if_match: Annotated[str | None, Header()] = None,
) -> RestoreOut:
    """A new version equal to `version`: definition, triggers and schedules. Honours
    `If-Match` like `PUT`."""
    settings = ctx.runtime.settings
    created, restored = await restore_version(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        settings=settings,
        cipher=ctx.runtime.cipher,
        workflow_id=workflow_id,
        number=version,
        message=body.message if body else None,
        if_match=if_match,
    )
    set_location(response, f"/api/workflows/{workflow_id}/versions/{created.number}")
    response.headers["ETag"] = versions.entity_tag(created.number)
    return RestoreOut(
        version=VersionOut.model_validate(created),
        new_trigger_secrets=[
            RecreatedSecret(trigger_id=t.id, url=hook_url(settings, t.id), secret=secret)
            for t, secret in restored.secrets
        ],
        skipped_triggers=[SkippedTrigger.model_validate(s) for s in restored.skipped],
    )
