"""A workflow's Triggers tab: what starts it by itself.

- Schedules (members manage): cron, zone, policies, the next five runs in the schedule's zone
  and UTC, pause / resume, create, delete, and each schedule's last ten ticks.
- Webhook triggers (admins manage): the URL to post to, a copy button, the scheme, an example
  `curl`, and the secret, shown once on the page that answers its creation or rotation.
- Event triggers (members manage): which workflow's ends start this one.
- The last fifty deliveries to the workflow's triggers, accepted or rejected with the reason.

Lists are read here in the page's tenant transaction; every change goes through the triggers
services (triggers/schedules.py, triggers/service.py), which validate and audit it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from zoneinfo import available_timezones

from fastapi import APIRouter, Request
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import aliased
from starlette.datastructures import FormData
from starlette.responses import Response

from taskloom.db.driver import session_connection
from taskloom.errors import DomainError, NotFound
from taskloom.orgs.models import Role
from taskloom.triggers import schedules
from taskloom.triggers import service as triggers
from taskloom.triggers.models import (
    CatchUp,
    Overlap,
    ScheduleTick,
    TriggerDelivery,
    TriggerKind,
    WorkflowTrigger,
)
from taskloom.triggers.schedule_schemas import ScheduleCreate, ScheduleUpdate
from taskloom.triggers.schemas import (
    EventTriggerCreate,
    RotateSecret,
    WebhookTriggerCreate,
)
from taskloom.triggers.verification import Scheme
from taskloom.web import trigger_help
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
from taskloom.workflows import service as workflows
from taskloom.workflows.models import Workflow

router = APIRouter(prefix="/ui/workflows", route_class=UiRoute, include_in_schema=False)

TICKS_SHOWN = 10
DELIVERIES_SHOWN = 50
END_STATUSES = ("succeeded", "failed", "cancelled")
TIMEZONES = sorted(available_timezones())


@dataclass(frozen=True)
class ScheduleRow:
    view: schedules.ScheduleView
    ticks: list[ScheduleTick]


@dataclass(frozen=True)
class HookRow:
    """A webhook trigger and how to call it."""

    trigger: WorkflowTrigger
    url: str  # as the API answers it: absolute under PUBLIC_URL, else a path
    curl: str


@dataclass(frozen=True)
class CreatedSecret:
    """The secret of a webhook trigger just created or rotated: on this page only."""

    trigger: WorkflowTrigger
    secret: str | None  # None: the admin gave the sender's own secret
    curl: str
    rotated: bool


@dataclass
class Forms:
    """What each form of the tab shows again after a refusal, and its errors."""

    schedule: dict[str, Any]
    webhook: dict[str, Any]
    event: dict[str, Any]
    errors: dict[str, list[FieldError]]

    @classmethod
    def empty(cls) -> Forms:
        return cls(
            schedule={
                "cron": "",
                "timezone": "UTC",
                "input": "{}",
                "overlap": Overlap.SKIP.value,
                "catch_up": CatchUp.NONE.value,
            },
            webhook={
                "verification": Scheme.TOKEN.value,
                "response": "async",
                "timeout": "10",
                "description": "",
            },
            event={"workflow": "", "status": ["succeeded"], "description": ""},
            errors={},
        )


# --- reading -------------------------------------------------------------------------------------


async def _last_ticks(
    page: Page, schedule_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[ScheduleTick]]:
    """Each schedule's last TICKS_SHOWN ticks, newest first, in one query."""
    if not schedule_ids:
        return {}
    ranked = (
        select(
            ScheduleTick,
            func.row_number()
            .over(partition_by=ScheduleTick.schedule_id, order_by=ScheduleTick.tick_at.desc())
            .label("n"),
        )
        .where(ScheduleTick.schedule_id.in_(schedule_ids))
        .subquery()
    )
    tick = aliased(ScheduleTick, ranked)
    rows = await page.db.execute(
        select(tick).where(ranked.c.n <= TICKS_SHOWN).order_by(ranked.c.tick_at.desc())
    )
    found: dict[uuid.UUID, list[ScheduleTick]] = {i: [] for i in schedule_ids}
    for row in rows.scalars():
        found[row.schedule_id].append(row)
    return found


async def _deliveries(page: Page, workflow_id: uuid.UUID) -> list[tuple[TriggerDelivery, str]]:
    """The last DELIVERIES_SHOWN deliveries to the workflow's triggers, newest first, each with
    its trigger's kind."""
    rows = await page.db.execute(
        select(TriggerDelivery, WorkflowTrigger.kind)
        .join(WorkflowTrigger, WorkflowTrigger.id == TriggerDelivery.trigger_id)
        .where(WorkflowTrigger.workflow_id == workflow_id)
        .order_by(TriggerDelivery.created_at.desc(), TriggerDelivery.id.desc())
        .limit(DELIVERIES_SHOWN)
    )
    return [(delivery, kind) for delivery, kind in rows]


def _curl(page: Page, trigger: WorkflowTrigger, secret: str | None = None) -> str:
    """The example command, on the address this page was reached at unless PUBLIC_URL is set."""
    url = trigger_help.absolute_url(
        triggers.hook_url(page.runtime.settings, trigger.id), str(page.request.base_url)
    )
    return trigger_help.curl_example(trigger.verification or "", url, secret)


def _hook(page: Page, trigger: WorkflowTrigger) -> HookRow:
    url = triggers.hook_url(page.runtime.settings, trigger.id)
    return HookRow(trigger, url, _curl(page, trigger))


def _created(
    page: Page, trigger: WorkflowTrigger, secret: str, *, rotated: bool, given: bool
) -> CreatedSecret:
    """What the page answering a creation or rotation shows: the secret Taskloom made, once; a
    secret the admin gave (the sender's own) is not echoed back."""
    if given:
        return CreatedSecret(trigger, None, _curl(page, trigger), rotated)
    return CreatedSecret(trigger, secret, _curl(page, trigger, secret), rotated)


async def _tab(
    page: Page,
    workflow: Workflow,
    *,
    status: int = 200,
    forms: Forms | None = None,
    created: CreatedSecret | None = None,
) -> Response:
    views = await schedules.list_schedules(db=page.db, workflow_id=workflow.id)
    ticks = await _last_ticks(page, [v.schedule.id for v in views])
    listed = await triggers.list_triggers(db=page.db, workflow_id=workflow.id)
    hooks = [_hook(page, t) for t in listed if t.kind == TriggerKind.WEBHOOK]
    events = [t for t in listed if t.kind == TriggerKind.EVENT]
    org_workflows = await workflows.list_workflows(
        reads=await session_connection(page.db), principal=page.principal
    )
    return render(
        page,
        "workflows/triggers.html",
        status=status,
        title=f"{workflow.name}: triggers",
        tab="triggers",
        workflow=workflow,
        schedules=[ScheduleRow(v, ticks[v.schedule.id]) for v in views],
        hooks=hooks,
        events=events,
        workflow_names={w.id: w.name for w in org_workflows},
        deliveries=await _deliveries(page, workflow.id),
        forms=forms or Forms.empty(),
        created=created,
        timezones=TIMEZONES,
        overlaps=[o.value for o in Overlap],
        catch_ups=[c.value for c in CatchUp],
        schemes=trigger_help.SCHEMES,
        timestamp_note=trigger_help.TIMESTAMP_NOTE,
        end_statuses=END_STATUSES,
    )


def _refusal(problem: Exception) -> tuple[int, list[FieldError]]:
    if isinstance(problem, FormProblem):
        return 422, problem.errors
    if isinstance(problem, ValidationError):
        return 422, from_validation(problem)
    assert isinstance(problem, DomainError)
    return problem.status_code, from_domain(problem)


@router.get("/{workflow_id}/triggers")
async def show_triggers(workflow_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.VIEWER)
        workflow = await workflows.get_workflow(db=page.db, workflow_id=workflow_id)
        return await _tab(page, workflow)


def _to_tab(workflow_id: uuid.UUID, notice: str) -> Response:
    return redirect(f"/ui/workflows/{workflow_id}/triggers?notice={notice}")


# --- schedules (members) -------------------------------------------------------------------------


def _schedule_values(form: FormData) -> dict[str, Any]:
    return {
        "cron": text(form, "cron").strip(),
        "timezone": text(form, "timezone").strip() or "UTC",
        "input": text(form, "input"),
        "overlap": text(form, "overlap") or Overlap.SKIP.value,
        "catch_up": text(form, "catch_up") or CatchUp.NONE.value,
    }


@router.post("/{workflow_id}/schedules")
async def create_schedule(workflow_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.MEMBER)
        workflow = await workflows.get_workflow(db=page.db, workflow_id=workflow_id)
        values = _schedule_values(form)
        try:
            body = ScheduleCreate.model_validate(
                {**values, "input": json_field(form, "input", default={})}
            )
            async with page.db.begin_nested():
                await schedules.create_schedule(
                    db=page.db,
                    principal=page.principal,
                    context=page.audit,
                    settings=page.runtime.settings,
                    workflow_id=workflow_id,
                    body=body,
                )
        except (FormProblem, ValidationError, DomainError) as problem:
            status, errors = _refusal(problem)
            forms = Forms.empty()
            forms.schedule, forms.errors = values, {"schedule": errors}
            return await _tab(page, workflow, status=status, forms=forms)
    return _to_tab(workflow_id, "schedule-created")


async def _own_schedule(page: Page, workflow_id: uuid.UUID, schedule_id: uuid.UUID) -> None:
    """NotFound unless the schedule is one of this workflow's (the address names both)."""
    view = await schedules.get_schedule(db=page.db, schedule_id=schedule_id)
    if view.schedule.workflow_id != workflow_id:
        raise NotFound("schedule not found")


@router.post("/{workflow_id}/schedules/{schedule_id}/enabled")
async def pause_or_resume(
    workflow_id: uuid.UUID, schedule_id: uuid.UUID, request: Request
) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.MEMBER)
        await _own_schedule(page, workflow_id, schedule_id)
        enabled = text(form, "enabled") == "true"
        await schedules.update_schedule(
            db=page.db,
            context=page.audit,
            schedule_id=schedule_id,
            body=ScheduleUpdate(enabled=enabled),
        )
    return _to_tab(workflow_id, "schedule-resumed" if enabled else "schedule-paused")


@router.post("/{workflow_id}/schedules/{schedule_id}/delete")
async def delete_schedule(
    workflow_id: uuid.UUID, schedule_id: uuid.UUID, request: Request
) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.MEMBER)
        await _own_schedule(page, workflow_id, schedule_id)
        await schedules.delete_schedule(db=page.db, context=page.audit, schedule_id=schedule_id)
    return _to_tab(workflow_id, "schedule-deleted")


# --- webhook triggers (admins) and event triggers (members) --------------------------------------


def _webhook_values(form: FormData) -> dict[str, Any]:
    return {
        "verification": text(form, "verification"),
        "response": text(form, "response") or "async",
        "timeout": text(form, "sync_timeout_seconds").strip(),
        "description": text(form, "description"),
    }


def _webhook_body(form: FormData, values: dict[str, Any]) -> WebhookTriggerCreate:
    return WebhookTriggerCreate.model_validate(
        {
            "kind": "webhook",
            "verification": values["verification"],
            "response": values["response"],
            "sync_timeout_seconds": values["timeout"] or 10,
            "description": optional_text(form, "description"),
            "secret": optional_text(form, "secret"),
        }
    )


def _event_values(form: FormData) -> dict[str, Any]:
    return {
        "workflow": text(form, "workflow"),
        "status": [s for s in form.getlist("status") if isinstance(s, str)],
        "description": text(form, "description"),
    }


def _event_body(form: FormData, values: dict[str, Any]) -> EventTriggerCreate:
    return EventTriggerCreate.model_validate(
        {
            "kind": "event",
            "on": {"workflow": values["workflow"], "status": values["status"]},
            "description": optional_text(form, "description"),
        }
    )


@router.post("/{workflow_id}/triggers")
async def create_trigger(workflow_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        kind = text(form, "kind")
        # The page's own refusal first: a webhook trigger's secret starts the workflow.
        page.require_role(Role.ADMIN if kind == TriggerKind.WEBHOOK else Role.MEMBER)
        workflow = await workflows.get_workflow(db=page.db, workflow_id=workflow_id)
        forms = Forms.empty()
        body: WebhookTriggerCreate | EventTriggerCreate
        try:
            if kind == TriggerKind.WEBHOOK:
                forms.webhook = _webhook_values(form)
                body = _webhook_body(form, forms.webhook)
            else:
                forms.event = _event_values(form)
                body = _event_body(form, forms.event)
            async with page.db.begin_nested():
                trigger, secret = await triggers.create_trigger(
                    db=page.db,
                    principal=page.principal,
                    context=page.audit,
                    settings=page.runtime.settings,
                    cipher=page.runtime.cipher,
                    workflow_id=workflow_id,
                    body=body,
                )
        except (ValidationError, DomainError) as problem:
            status, errors = _refusal(problem)
            forms.errors = {"webhook" if kind == TriggerKind.WEBHOOK else "event": errors}
            return await _tab(page, workflow, status=status, forms=forms)
        if secret is None:
            return _to_tab(workflow_id, "trigger-created")
        # Rendered, not redirected: the secret is shown this once.
        given = isinstance(body, WebhookTriggerCreate) and body.secret is not None
        created = _created(page, trigger, secret, rotated=False, given=given)
        return await _tab(page, workflow, status=201, created=created)


async def _own_trigger(
    page: Page, workflow_id: uuid.UUID, trigger_id: uuid.UUID
) -> tuple[Workflow, WorkflowTrigger]:
    """The workflow and its trigger; NotFound unless the trigger is one of this workflow's."""
    workflow = await workflows.get_workflow(db=page.db, workflow_id=workflow_id)
    trigger = await triggers.get_trigger(db=page.db, trigger_id=trigger_id)
    if trigger.workflow_id != workflow.id:
        raise NotFound("trigger not found")
    return workflow, trigger


@router.post("/{workflow_id}/triggers/{trigger_id}/rotate-secret")
async def rotate_secret(
    workflow_id: uuid.UUID, trigger_id: uuid.UUID, request: Request
) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.ADMIN)
        workflow, _ = await _own_trigger(page, workflow_id, trigger_id)
        try:
            body = _rotation(form)
            async with page.db.begin_nested():
                trigger, secret = await triggers.rotate_secret(
                    db=page.db,
                    principal=page.principal,
                    context=page.audit,
                    cipher=page.runtime.cipher,
                    trigger_id=trigger_id,
                    body=body,
                )
        except (FormProblem, ValidationError, DomainError) as problem:
            status, errors = _refusal(problem)
            forms = Forms.empty()
            forms.errors = {f"rotate-{trigger_id}": errors}
            return await _tab(page, workflow, status=status, forms=forms)
        created = _created(page, trigger, secret, rotated=True, given=body.secret is not None)
        return await _tab(page, workflow, created=created)


def _rotation(form: FormData) -> RotateSecret:
    try:
        hours = int(text(form, "overlap_hours") or 24)
    except ValueError:
        hours = -1
    if not 0 <= hours <= 168:
        raise FormProblem([FieldError("overlap_hours", "a whole number of hours from 0 to 168")])
    return RotateSecret.model_validate(
        {"overlap_seconds": hours * 3600, "secret": optional_text(form, "secret")}
    )


@router.post("/{workflow_id}/triggers/{trigger_id}/delete")
async def delete_trigger(
    workflow_id: uuid.UUID, trigger_id: uuid.UUID, request: Request
) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.MEMBER)  # and admin for a webhook trigger: the service says
        await _own_trigger(page, workflow_id, trigger_id)
        await triggers.delete_trigger(
            db=page.db, principal=page.principal, context=page.audit, trigger_id=trigger_id
        )
    return _to_tab(workflow_id, "trigger-deleted")
