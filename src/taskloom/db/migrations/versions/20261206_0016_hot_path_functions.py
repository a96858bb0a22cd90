"""The worker's hot path in one call each (issue 20): `taskloom_claim` (mark an execution
running and read what the worker needs), `taskloom_step_started` and `taskloom_step_succeeded`
(which may also end the execution). Each sets the tenant and does its writes in one statement's
transaction, so a one-step execution costs the worker two round trips instead of two
transactions of six to nine statements each.

They are SECURITY INVOKER: they run as the application role, under forced row-level security,
with the tenant they set themselves (`set_config(…, true)`, gone at the end of the call's
transaction), exactly as the statements they replace did. A caller can name any organization,
as it could with `set_config` before: the application decides the tenant, and a wrong one finds
no row (the execution is "gone").

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None
# Functions only: the previous release does not call them and its statements are unchanged.
breaks_previous = False

_SET_TENANT = """
    PERFORM set_config('app.org_id', p_org::text, true), set_config('app.user_id', '', true),
        set_config('app.request_id', coalesce(p_request_id, ''), true);
"""
# A step's row names its execution by a foreign key, which PostgreSQL checks without row-level
# security: the execution must be the tenant's own, or no row is written.
_OWN_EXECUTION = """
    PERFORM 1 FROM workflow_executions WHERE id = p_execution;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'execution % not found', p_execution USING ERRCODE = 'no_data_found';
    END IF;
"""

# The per-organization advisory lock makes count-then-update atomic across workers, as the
# claim did before (and in the same order: lock, then row), but is held for one call's
# microseconds rather than for six round trips.
_CLAIM = f"""
CREATE FUNCTION taskloom_claim(
    p_org uuid, p_execution uuid, p_max_running integer, p_request_id text
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    e workflow_executions%ROWTYPE;
    n_running integer;
BEGIN
    {_SET_TENANT}
    PERFORM pg_advisory_xact_lock(hashtextextended('taskloom.org_slots:' || p_org::text, 0));
    SELECT * INTO e FROM workflow_executions WHERE id = p_execution FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('claim', 'gone');
    END IF;
    IF e.status IN ('succeeded', 'failed', 'cancelled') THEN
        RETURN jsonb_build_object('claim', 'finished');
    END IF;
    IF e.cancel_requested_at IS NOT NULL THEN
        UPDATE workflow_executions
        SET status = 'cancelled', output = NULL, error = NULL, finished_at = now()
        WHERE id = p_execution;
        RETURN jsonb_build_object('claim', 'cancelled');
    END IF;
    IF e.status <> 'running' THEN
        SELECT count(*) INTO n_running FROM (
            SELECT 1 FROM workflow_executions
            WHERE org_id = p_org AND status = 'running' LIMIT p_max_running
        ) AS r;
        IF n_running >= p_max_running THEN
            RETURN jsonb_build_object('claim', 'defer');
        END IF;
    END IF;
    UPDATE workflow_executions
    SET status = 'running', started_at = coalesce(started_at, now()), attempts = attempts + 1
    WHERE id = p_execution
    RETURNING started_at INTO e.started_at;
    RETURN jsonb_build_object(
        'claim', 'run',
        'definition', e.definition,
        'input', e.input,
        'started_at', extract(epoch FROM e.started_at),
        'triggered_by', e.triggered_by,
        'parent_execution_id', e.parent_execution_id,
        'root_execution_id', coalesce(e.root_execution_id, e.id),
        'depth', e.depth,
        'steps', (
            SELECT coalesce(jsonb_agg(jsonb_build_array(
                step_id, status, output, error, attempts, extract(epoch FROM finished_at)
            )), '[]'::jsonb)
            FROM execution_steps WHERE execution_id = p_execution
        ),
        'items', (
            SELECT coalesce(jsonb_agg(jsonb_build_array(
                step_id, item_index, status, output, attempts
            )), '[]'::jsonb)
            FROM execution_step_items WHERE execution_id = p_execution
        )
    );
END $$
"""

# A step starts: its row is made on the first run; each run counts as an attempt and starts
# afresh. Returns the attempt number (1 the first time).
_STEP_STARTED = f"""
CREATE FUNCTION taskloom_step_started(
    p_org uuid, p_execution uuid, p_step text, p_position integer, p_type text,
    p_request_id text
) RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n_attempts integer;
BEGIN
    {_SET_TENANT}
    {_OWN_EXECUTION}
    INSERT INTO execution_steps AS s (
        id, org_id, execution_id, step_id, position, type, status, attempts, started_at
    ) VALUES (
        gen_random_uuid(), p_org, p_execution, p_step, p_position, p_type, 'running', 1, now()
    )
    ON CONFLICT (execution_id, step_id) DO UPDATE SET
        status = 'running', attempts = s.attempts + 1, started_at = now(), finished_at = NULL,
        error = NULL
    RETURNING s.attempts INTO n_attempts;
    RETURN n_attempts;
END $$
"""

# A step's success, with its (redacted) input and its output. `p_started`: its run was
# recorded by taskloom_step_started; otherwise (a step without I/O, whose start is not worth a
# round trip) this makes or updates its row as one more attempt, started and finished now.
# `p_finish`: the success ends the execution, with `p_execution_output`, in the same
# transaction (only an execution still running: a cancel that ended it stays).
_STEP_SUCCEEDED = f"""
CREATE FUNCTION taskloom_step_succeeded(
    p_org uuid, p_execution uuid, p_step text, p_position integer, p_type text,
    p_input jsonb, p_output jsonb, p_started boolean, p_finish boolean,
    p_execution_output jsonb, p_request_id text
) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    {_SET_TENANT}
    {_OWN_EXECUTION}
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
END $$
"""


def upgrade() -> None:
    op.execute(_CLAIM)
    op.execute(_STEP_STARTED)
    op.execute(_STEP_SUCCEEDED)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION taskloom_step_succeeded(uuid, uuid, text, integer, text, jsonb, "
        "jsonb, boolean, boolean, jsonb, text)"
    )
    op.execute("DROP FUNCTION taskloom_step_started(uuid, uuid, text, integer, text, text)")
    op.execute("DROP FUNCTION taskloom_claim(uuid, uuid, integer, text)")
