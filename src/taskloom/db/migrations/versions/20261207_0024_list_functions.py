"""The API's two hottest reads in one call each (issue 20, fourth round): `taskloom_workflows`
(an organization's workflows by name) and `taskloom_recent_executions` (its executions newest
first, after a cursor, at most a page). Called on a connection in autocommit, each is one round
trip where a read transaction took three (BEGIN with the tenant's `set_config`, the SELECT,
COMMIT).

Like the worker's functions (0016, 0018) they are SECURITY INVOKER and set the tenant
themselves (`set_config(…, true)`, gone when the call's statement ends): they run as the
application role under forced row-level security, so a wrong organization finds no row. They
are STABLE, so PostgreSQL refuses any write in them, as the read-only transaction did.

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None
# New functions only: the previous release does not call them.
breaks_previous = False

_SET_TENANT = """
    PERFORM set_config('app.org_id', coalesce(p_org::text, ''), true),
        set_config('app.user_id', coalesce(p_user::text, ''), true),
        set_config('app.request_id', coalesce(p_request_id, ''), true);
"""

_WORKFLOWS = f"""
CREATE FUNCTION taskloom_workflows(
    p_org uuid, p_user uuid, p_request_id text
) RETURNS SETOF workflows LANGUAGE plpgsql STABLE AS $$
BEGIN
    {_SET_TENANT}
    RETURN QUERY SELECT * FROM workflows WHERE org_id = p_org ORDER BY name, id;
END $$
"""

# The columns an execution shows in a list (executions/schemas.ExecutionOut; a test keeps
# them equal), not the definition it was started with, which may be large. No cursor:
# p_after_time and p_after_id are null. `p_limit` rows at most (the caller asks one more than a
# page, to know whether another follows).
_COLUMNS = """e.id, e.workflow_id, e.workflow_version, e.status::text, e.input, e.output,
    e.error, e.attempts, e.triggered_by, e.created_at, e.started_at, e.finished_at,
    e.cancel_requested_at, e.wake_at, e.parent_execution_id, e.parent_step_id::text, e.depth,
    e.trigger_kind::text, e.trigger_id, e.retry_of"""
_RECENT_EXECUTIONS = f"""
CREATE FUNCTION taskloom_recent_executions(
    p_org uuid, p_user uuid, p_request_id text,
    p_after_time timestamptz, p_after_id uuid, p_limit integer
) RETURNS TABLE (
    id uuid, workflow_id uuid, workflow_version integer, status text, input jsonb,
    output jsonb, error jsonb, attempts integer, triggered_by uuid, created_at timestamptz,
    started_at timestamptz, finished_at timestamptz, cancel_requested_at timestamptz,
    wake_at timestamptz, parent_execution_id uuid, parent_step_id text, depth integer,
    trigger_kind text, trigger_id uuid, retry_of uuid
) LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    {_SET_TENANT}
    IF p_after_time IS NULL THEN
        RETURN QUERY SELECT {_COLUMNS} FROM workflow_executions e WHERE e.org_id = p_org
            ORDER BY e.created_at DESC, e.id DESC LIMIT p_limit;
    ELSE  -- its own statement (and cached plan): the cursor is an index condition
        RETURN QUERY SELECT {_COLUMNS} FROM workflow_executions e
            WHERE e.org_id = p_org AND (e.created_at, e.id) < (p_after_time, p_after_id)
            ORDER BY e.created_at DESC, e.id DESC LIMIT p_limit;
    END IF;
END $$
"""


def upgrade() -> None:
    op.execute(_WORKFLOWS)
    op.execute(_RECENT_EXECUTIONS)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION taskloom_recent_executions(uuid, uuid, text, timestamptz, uuid, integer)"
    )
    op.execute("DROP FUNCTION taskloom_workflows(uuid, uuid, text)")
