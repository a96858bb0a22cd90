"""/api/workflows/{id}/schedules and /api/schedules: viewers read, members manage the schedules
of the workflows they may edit (docs/TRIGGERS.md, Schedules)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from taskloom.auth.access import access
from taskloom.auth.deps import Member, Viewer
from taskloom.locations import located, set_location
from taskloom.triggers import schedules as service
from taskloom.triggers.models import CatchUp, Overlap
from taskloom.triggers.schedule_schemas import ScheduleCreate, ScheduleOut, ScheduleUpdate, TickOut

router = APIRouter(prefix="/api", tags=["schedules"])


def _out(view: service.ScheduleView) -> ScheduleOut:
    s = view.schedule
    return ScheduleOut(
        id=s.id,
        workflow_id=s.workflow_id,
        cron=s.cron,
        timezone=s.timezone,
        input=s.input,
        enabled=s.enabled,
        overlap=Overlap(s.overlap),
        catch_up=CatchUp(s.catch_up),
        next_runs=view.next_runs,
        last_execution_id=s.last_execution_id,
        created_by=s.created_by,
        created_at=s.created_at,
        updated_at=s.updated_at,
    )


@router.post(
    "/workflows/{workflow_id}/schedules",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=access("member"),
    responses=located(201),
)
async def create_workflow_schedule(
    workflow_id: uuid.UUID, body: ScheduleCreate, ctx: Member, response: Response
) -> ScheduleOut:
    view = await service.create_schedule(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        settings=ctx.runtime.settings,
        workflow_id=workflow_id,
        body=body,
    )
    set_location(response, f"/api/schedules/{view.schedule.id}")
    return _out(view)


@router.get("/workflows/{workflow_id}/schedules", openapi_extra=access("viewer"))
async def list_workflow_schedules(workflow_id: uuid.UUID, ctx: Viewer) -> list[ScheduleOut]:
    return [_out(v) for v in await service.list_schedules(db=ctx.db, workflow_id=workflow_id)]


@router.get("/schedules/{schedule_id}", openapi_extra=access("viewer"))
async def get_schedule(schedule_id: uuid.UUID, ctx: Viewer) -> ScheduleOut:
    return _out(await service.get_schedule(db=ctx.db, schedule_id=schedule_id))


@router.patch("/schedules/{schedule_id}", openapi_extra=access("member"))
async def update_schedule(schedule_id: uuid.UUID, body: ScheduleUpdate, ctx: Member) -> ScheduleOut:
    """Change any subset of the fields; `enabled` pauses and resumes."""
    view = await service.update_schedule(
        db=ctx.db, context=ctx.audit, schedule_id=schedule_id, body=body
    )
    return _out(view)


@router.delete(
    "/schedules/{schedule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=access("member"),
)
async def delete_schedule(schedule_id: uuid.UUID, ctx: Member) -> Response:
    await service.delete_schedule(db=ctx.db, context=ctx.audit, schedule_id=schedule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/schedules/{schedule_id}/ticks", openapi_extra=access("viewer"))
async def list_schedule_ticks(
    schedule_id: uuid.UUID,
    ctx: Viewer,
    limit: Annotated[int, Query(ge=1, le=service.MAX_TICKS_SHOWN)] = 10,
) -> list[TickOut]:
    """The last ticks, newest first: started, queued, skipped or failed, and why."""
    ticks = await service.list_ticks(db=ctx.db, schedule_id=schedule_id, limit=limit)
    return [TickOut.model_validate(t, from_attributes=True) for t in ticks]
