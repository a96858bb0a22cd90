"""A workflow's versions: every create, `PUT` and restore stores one, immutable (the application
role may not change or delete the rows), numbered as the workflow's `version`. Read them, newest
first; compare two as a unified diff of their canonical YAML; and check `If-Match`.

Restoring one (which needs the triggers' services) is in workflows/restore.py, so that saving a
workflow here imports only the triggers' models (triggers/snapshot.py)."""

from __future__ import annotations

import asyncio
import difflib
import re
import uuid
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML ships no type hints
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.errors import ErrorResponse, NotFound, PreconditionFailed
from taskloom.pagination import decode_position, encode_position
from taskloom.triggers.snapshot import Snapshot, take
from taskloom.workflows.models import Workflow, WorkflowVersion

MAX_PAGE = 100
NOTHING = Snapshot(triggers=[], schedules=[])  # a workflow just created has no trigger yet
_ENTITY_TAG = re.compile(r'^"(\d{1,10})"$')
# OpenAPI: the routes that honour If-Match document its 412, those that answer an ETag say so.
PRECONDITION_FAILED: dict[int | str, dict[str, Any]] = {
    412: {"model": ErrorResponse, "description": "If-Match names a version it is no longer at"}
}
ETAG = {
    "ETag": {"description": 'The workflow\'s version, quoted: "3"', "schema": {"type": "string"}}
}


def entity_tag(version: int) -> str:
    """The workflow's `ETag`: its version number, quoted (a strong validator)."""
    return f'"{version}"'


def check_if_match(if_match: str | None, workflow: Workflow) -> None:
    """Nothing when `If-Match` is absent, `*`, or lists the workflow's current ETag; else 412
    `version_mismatch` naming the current version. A weak (`W/`) or malformed tag never
    matches (RFC 9110: If-Match compares strongly)."""
    if if_match is None:
        return
    tags = [tag.strip() for tag in if_match.split(",")]
    if "*" in tags:
        return
    numbers = {int(m.group(1)) for tag in tags if (m := _ENTITY_TAG.match(tag))}
    if workflow.version not in numbers:
        raise PreconditionFailed(
            f"the workflow is at version {workflow.version}, not the one in If-Match "
            f"({if_match[:100]}); read it again, then retry with If-Match: "
            f"{entity_tag(workflow.version)}",
            code="version_mismatch",
            details={"current_version": workflow.version},
        )


async def record(
    *,
    db: AsyncSession,
    workflow: Workflow,
    author: uuid.UUID | None,
    message: str | None,
    snapshot: Snapshot | None = None,
    restored_from: int | None = None,
) -> WorkflowVersion:
    """Store the workflow as it is now, with its triggers and schedules (read now unless
    given), as version `workflow.version`."""
    taken = snapshot if snapshot is not None else await take(db, workflow.id)
    version = WorkflowVersion(
        org_id=workflow.org_id,
        workflow_id=workflow.id,
        number=workflow.version,
        name=workflow.name,
        description=workflow.description,
        definition=workflow.definition,
        triggers=taken.triggers,
        schedules=taken.schedules,
        message=message,
        restored_from=restored_from,
        created_by=author,
    )
    db.add(version)
    await db.flush()
    return version


async def _workflow_there(db: AsyncSession, workflow_id: uuid.UUID) -> None:
    """NotFound unless the workflow is in the caller's organization."""
    if await db.get(Workflow, workflow_id) is None:
        raise NotFound("workflow not found")


async def list_versions(
    *, db: AsyncSession, workflow_id: uuid.UUID, cursor: str | None, limit: int
) -> tuple[list[WorkflowVersion], str | None]:
    """Newest first; `cursor` continues after the last item of the previous page."""
    await _workflow_there(db, workflow_id)
    limit = max(1, min(limit, MAX_PAGE))
    query = select(WorkflowVersion).where(WorkflowVersion.workflow_id == workflow_id)
    if cursor:
        query = query.where(WorkflowVersion.number < decode_position(cursor))
    rows = await db.execute(query.order_by(WorkflowVersion.number.desc()).limit(limit + 1))
    items = list(rows.scalars())
    more = len(items) > limit
    items = items[:limit]
    return items, (encode_position(items[-1].number) if more else None)


async def get_version(*, db: AsyncSession, workflow_id: uuid.UUID, number: int) -> WorkflowVersion:
    """The version, or NotFound (also for another organization's workflow)."""
    await _workflow_there(db, workflow_id)
    found = await db.scalar(
        select(WorkflowVersion).where(
            WorkflowVersion.workflow_id == workflow_id, WorkflowVersion.number == number
        )
    )
    if found is None:
        raise NotFound(f"the workflow has no version {number}", code="version_not_found")
    return found


def document(version: WorkflowVersion) -> dict[str, Any]:
    """What a version saved, as one document: what a restore brings back."""
    return {
        "name": version.name,
        "description": version.description,
        "definition": version.definition,
        "triggers": version.triggers,
        "schedules": version.schedules,
    }


# LibYAML's emitter when PyYAML was built with it (its wheels are): the same text, a few
# times faster than the pure-Python one, which stays the fallback.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def canonical_yaml(value: Any) -> str:
    """YAML with every mapping's keys sorted (lists keep their order, which is meaningful):
    equal documents give the same text, whatever order their keys were stored in."""
    text: str = yaml.dump(
        value,
        Dumper=_DUMPER,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
    return text


def unified_diff(old: tuple[int, dict[str, Any]] | None, new: tuple[int, dict[str, Any]]) -> str:
    """What changed from `old` (its number and document; None: from nothing) to `new`, as a
    unified diff of their canonical YAML; empty when they saved the same."""
    before = canonical_yaml(old[1]).splitlines(keepends=True) if old else []
    after = canonical_yaml(new[1]).splitlines(keepends=True)
    return "".join(
        difflib.unified_diff(
            before,
            after,
            fromfile=f"version {old[0]}" if old else "nothing",
            tofile=f"version {new[0]}",
        )
    )


async def diff(
    *, db: AsyncSession, workflow_id: uuid.UUID, number: int, against: int | None
) -> tuple[WorkflowVersion | None, WorkflowVersion, str]:
    """Version `number` compared with version `against` (default: the one before it; version
    1 is compared with nothing). The text is made in a worker thread: two definitions near
    the body limit take a second or more, which must not stall this process's other requests."""
    new = await get_version(db=db, workflow_id=workflow_id, number=number)
    base = number - 1 if against is None else against
    old = await get_version(db=db, workflow_id=workflow_id, number=base) if base >= 1 else None
    text = await asyncio.to_thread(
        unified_diff,
        (old.number, document(old)) if old else None,
        (new.number, document(new)),
    )
    return old, new, text
