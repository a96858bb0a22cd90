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

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None
# New functions only: the previous release calls 0016's, which stay as they are.
breaks_previous = False

_SET_TENANT = """
    PERFORM set_config('app.org_id', p_org::text, true), set_config('app.user_id', '', true),
        set_config('app.request_id', coalesce(p_request_id, ''), true);
"""

# taskloom_step_succeeded's writes; returns whether the execution's cancel was requested (read
# with the check that the execution is the tenant's own, in this call's transaction).
_STEP_DONE = f"""
CREATE FUNCTION taskloom_step_done(
    p_org uuid, p_execution uuid, p_step text, p_position integer, p_type text,
    p_input jsonb, p_output jsonb, p_started boolean, p_finish boolean,
    p_execution_output jsonb, p_request_id text
) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_cancel boolean;
BEGIN
    {_SET_TENANT}
    -- A step's row names its execution by a foreign key, which PostgreSQL checks without
    -- row-level security: the execution must be the tenant's own, or no row is written.
    SELECT cancel_requested_at IS NOT NULL INTO v_cancel
    FROM workflow_executions WHERE id = p_execution;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'execution % not found', p_execution USING ERRCODE = 'no_data_found';
    END IF;
    IF p_started THEN
        UPDATE execution_steps
        SET status = 'succeeded', input = p_input, output = p_output, error = NULL,
            finished_at = now()
        WHERE execution_id = p_execution AND step_id = p_step;
    ELSE
        INSERT INTO execution_steps AS s (
            id, org_id, execution_id, step_id, position, type, status, attempts, started_at,
            finished_at, input, output
        ) VALUES (
            gen_random_uuid(), p_org, p_execution, p_step, p_position, p_type, 'succeeded', 1,
            now(), now(), p_input, p_output
        )
        ON CONFLICT (execution_id, step_id) DO UPDATE SET
            status = 'succeeded', attempts = s.attempts + 1, started_at = now(),
            finished_at = now(), input = p_input, output = p_output, error = NULL;
    END IF;
    IF p_finish THEN
        UPDATE workflow_executions
        SET status = 'succeeded', output = p_execution_output, error = NULL, finished_at = now()
        WHERE id = p_execution AND status = 'running';
    END IF;
    RETURN v_cancel;
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
