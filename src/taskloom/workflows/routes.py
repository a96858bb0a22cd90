"""/api/workflows: viewers read, members write (running one is in executions/routes.py; the
versions each save stores are in version_routes.py). `GET` answers with `ETag: "<version>"`,
and `PUT` honours `If-Match` with it (412 when the workflow has moved on)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Response, status
from fastapi.responses import JSONResponse

from taskloom.auth.access import access
from taskloom.auth.deps import Member, RequestContext, Viewer, ViewerReads
from taskloom.auth.read_lane import lane_of, no_query
from taskloom.locations import located, set_location
from taskloom.workflows import files, service, versions
from taskloom.workflows.models import Workflow
from taskloom.workflows.schemas import WorkflowCreate, WorkflowOut, WorkflowPatch, WorkflowUpdate

router = APIRouter(prefix="/api", tags=["workflows"])


@router.get("/workflows", openapi_extra=access("viewer"))
async def list_workflows(ctx: ViewerReads) -> list[WorkflowOut]:
    async with ctx.calls() as calls:
        return await service.list_workflows(reads=calls, principal=ctx.principal)


# Its usual request (no query) is answered without FastAPI's machinery (auth/read_lane.py).
LIST_LANE = lane_of(router, list_workflows, no_query)


@router.post(
    "/workflows",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=access("member"),
    responses=located(201),
)
async def create_workflow(body: WorkflowCreate, ctx: Member, response: Response) -> WorkflowOut:
    workflow = await service.create_workflow(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, body=body
    )
    set_location(response, f"/api/workflows/{workflow.id}")
    response.headers["ETag"] = versions.entity_tag(workflow.version)
    return await _with_warnings(ctx, workflow)


@router.get(
    "/workflows/{workflow_id}",
    openapi_extra=access("viewer"),
    responses={200: {"headers": versions.ETAG}},
)
async def get_workflow(workflow_id: uuid.UUID, ctx: Viewer, response: Response) -> WorkflowOut:
    """The `ETag` is the version, for `If-Match` on `PUT`."""
    workflow = await service.get_workflow(db=ctx.db, workflow_id=workflow_id)
    response.headers["ETag"] = versions.entity_tag(workflow.version)
    return WorkflowOut.model_validate(workflow)


@router.put(
    "/workflows/{workflow_id}",
    openapi_extra=access("member"),
    responses={200: {"headers": versions.ETAG}, **versions.PRECONDITION_FAILED},
)
async def update_workflow(
    workflow_id: uuid.UUID,
    body: WorkflowUpdate,
    ctx: Member,
    response: Response,
    if_match: Annotated[
        str | None, Header(description='"<version>" (the ETag of GET): 412 if it has moved on')
    ] = None,
) -> WorkflowOut:
    """Replace the workflow; stores a new version (with `message`)."""
    workflow = await service.update_workflow(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        workflow_id=workflow_id,
        body=body,
        if_match=if_match,
    )
    response.headers["ETag"] = versions.entity_tag(workflow.version)
    return await _with_warnings(ctx, workflow)


@router.get(
    "/schema/workflow.json",
    openapi_extra=access("public"),
    response_class=JSONResponse,
    responses={200: {"content": {"application/schema+json": {}}}},
)
async def get_workflow_file_schema() -> Response:
    """The JSON Schema of a workflow file (docs/WORKFLOWS-AS-CODE.md), as shipped in the
    package: editors point at it (`# yaml-language-server: $schema=...`). Public, cacheable."""
    return Response(
        content=_SCHEMA,
        media_type="application/schema+json",
        headers={"Cache-Control": "public, max-age=3600"},
    )


_SCHEMA = files.shipped_schema().encode()


async def _with_warnings(ctx: RequestContext, workflow: Workflow) -> WorkflowOut:
    answer = WorkflowOut.model_validate(workflow)
    answer.warnings = await service.warnings(
        db=ctx.db, org_id=workflow.org_id, definition=workflow.definition
    )
    return answer


@router.patch("/workflows/{workflow_id}", openapi_extra=access("member"))
async def patch_workflow(workflow_id: uuid.UUID, body: WorkflowPatch, ctx: Member) -> WorkflowOut:
    """Enable or disable the workflow without a new version."""
    workflow = await service.set_enabled(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        workflow_id=workflow_id,
        enabled=body.enabled,
    )
    return WorkflowOut.model_validate(workflow)


@router.delete(
    "/workflows/{workflow_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=access("member"),
)
async def delete_workflow(workflow_id: uuid.UUID, ctx: Member) -> Response:
    await service.delete_workflow(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, workflow_id=workflow_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
