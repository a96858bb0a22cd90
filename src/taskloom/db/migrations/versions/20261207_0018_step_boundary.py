"""A step boundary in one call (issue 20, second round): `taskloom_step_done` is
`taskloom_step_succeeded` (migration 0016) that also answers whether a cancel was requested,
read in the same transaction; and `taskloom_cancel_requested` asks that alone. A worker looks
for a cancel request before it starts the next steps; after a step's success it now has the
answer from the success's own call, so a chain of `transform` steps costs one round trip per
step boundary instead of the success's call and a transaction of four statements (BEGIN, the
tenant's `set_config`, the SELECT, COMMIT) for the cancel check.

Both are SECURITY INVOKER and set the tenant themselves (`set_config(…, true)`), as 0016's do:
run as the application role under forced row-level security, they see only the tenant's
execution (`taskloom_step_done` refuses one it cannot see, as `taskloom_step_succeeded` does;
`taskloom_cancel_requested` answers false, as the SELECT it replaces found no row).

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None
# New functions only: the previous release calls 0016's, which stay as they are.
breaks_previous = False

_SET_TENANT = """
    PERFORM set_config('app.org_id', p_org::text, true), set_config('app.user_id', '', true),
        set_config('app.request_id', coalesce(p_request_id, ''), true);
"""

# taskloom_step_succeeded's writes (0016, called as it is), then whether the execution's cancel
# was requested, read in the same call's transaction.
_STEP_DONE = """
CREATE FUNCTION taskloom_step_done(
    p_org uuid, p_execution uuid, p_step text, p_position integer, p_type text,
    p_input jsonb, p_output jsonb, p_started boolean, p_finish boolean,
    p_execution_output jsonb, p_request_id text
) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- Sets the tenant, and refuses an execution the tenant cannot see.
    PERFORM taskloom_step_succeeded(
        p_org, p_execution, p_step, p_position, p_type, p_input, p_output, p_started,
        p_finish, p_execution_output, p_request_id
    );
    RETURN (
        SELECT cancel_requested_at IS NOT NULL FROM workflow_executions WHERE id = p_execution
    );
END $$
"""

_CANCEL_REQUESTED = f"""
CREATE FUNCTION taskloom_cancel_requested(
    p_org uuid, p_execution uuid, p_request_id text
) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_cancel boolean;
BEGIN
    {_SET_TENANT}
    SELECT cancel_requested_at IS NOT NULL INTO v_cancel
    FROM workflow_executions WHERE id = p_execution;
    RETURN coalesce(v_cancel, false);
END $$
"""


def upgrade() -> None:
    op.execute(_STEP_DONE)
    op.execute(_CANCEL_REQUESTED)


def downgrade() -> None:
    op.execute("DROP FUNCTION taskloom_cancel_requested(uuid, uuid, text)")
    op.execute(
        "DROP FUNCTION taskloom_step_done(uuid, uuid, text, integer, text, jsonb, jsonb, "
        "boolean, boolean, jsonb, text)"
    )
