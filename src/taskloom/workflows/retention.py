"""Workflow version retention (WORKFLOW_VERSIONS_KEPT): the newest N versions of each workflow
are kept, older ones deleted. The current version (`workflows.version`) is always among the
kept, since only numbers up to `version - N` go; nothing else is touched: an execution holds its
own copy of the definition it ran, so runs, restores and diffs of kept versions are unaffected.

Versions are append-only for the application role (ADR 0012), so the deletion runs on the
privileged role, across organizations: one transaction per batch of BATCH rows, locked with
SKIP LOCKED so it never waits on (or for) anything else. The workflows' upkeep (`UPKEEP`, on the
one worker leading the upkeep, queue/upkeep.py) runs it at most once a minute per process, for
up to SECONDS_PER_TICK; `taskloom purge` runs it to the end, and `--dry-run` counts."""

from __future__ import annotations

import time
import uuid

import structlog
from sqlalchemy import Select, delete, func, select

from taskloom.db.tenancy import system_transaction
from taskloom.queue.host import Upkeep
from taskloom.runtime import Runtime
from taskloom.workflows.models import Workflow, WorkflowVersion

log = structlog.get_logger("taskloom.queue")

BATCH = 500
# Time an upkeep tick may spend deleting, BATCH per transaction. In steady state a minute's saves
# go in one batch; a backlog (a first run, a lowered WORKFLOW_VERSIONS_KEPT) drains over several
# ticks instead of holding the leader for long.
SECONDS_PER_TICK = 5.0
# The scan visits every workflow with more versions than kept: once a minute is soon enough for
# a bound on history, and spares the leader's 30 s ticks (RECONCILE_INTERVAL_SECONDS) half of it.
SCAN_EVERY_SECONDS = 60.0


def _old_versions(kept: int) -> Select[uuid.UUID]:
    """Ids of versions older than their workflow's newest `kept`. The plan: a scan of
    `workflows` for those past `kept` versions, each probed by a range scan of the unique index
    on (workflow_id, number), workflow_versions_workflow_id_number_key; no other index needed
    (EXPLAIN ANALYZE on 20,000 workflows and 220,000 versions: a batch of 500 in about 5 ms)."""
    return (
        select(WorkflowVersion.id)
        .join(Workflow, Workflow.id == WorkflowVersion.workflow_id)
        .where(Workflow.version > kept, WorkflowVersion.number <= Workflow.version - kept)
    )


async def purge_old_versions(
    runtime: Runtime, *, dry_run: bool = False, seconds: float | None = None
) -> int:
    """Delete (or, in a dry run, count) the versions beyond each workflow's newest
    WORKFLOW_VERSIONS_KEPT, BATCH per transaction, until none is left or `seconds` have passed
    (checked between batches); returns how many."""
    kept = runtime.settings.workflow_versions_kept
    if dry_run:
        async with system_transaction(runtime.database) as db:
            counted = select(func.count()).select_from(_old_versions(kept).subquery())
            return int((await db.execute(counted)).scalar_one())
    until = None if seconds is None else time.monotonic() + seconds
    total = 0
    while True:
        async with system_transaction(runtime.database) as db:
            batch = (
                _old_versions(kept)
                .limit(BATCH)
                .with_for_update(of=WorkflowVersion, skip_locked=True)
                .scalar_subquery()
            )
            deleted = await db.execute(delete(WorkflowVersion).where(WorkflowVersion.id.in_(batch)))
            count = int(getattr(deleted, "rowcount", 0) or 0)
        total += count
        if count < BATCH or (until is not None and time.monotonic() >= until):
            return total


async def purge_some(runtime: Runtime) -> None:
    """The upkeep's tick: old versions for up to SECONDS_PER_TICK, logged when any went."""
    if count := await purge_old_versions(runtime, seconds=SECONDS_PER_TICK):
        log.info("old_workflow_versions_purged", count=count)


UPKEEP = Upkeep(name="workflow_version_retention", run=purge_some, at_most_every=SCAN_EVERY_SECONDS)
