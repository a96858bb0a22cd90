"""The usual claim in one write (issue 20): `taskloom_claim` (migration 0016) locked the
execution's row (`SELECT … FOR UPDATE`, itself a write to the table and the WAL) before marking
it running, and read its steps' and items' rows, which a first run has none of. Now an
execution waiting to run, with no cancel asked and its organization under its cap, is marked
running by one conditional UPDATE (the row lock is the update's own; a cancel committed
meanwhile makes it match nothing), and a first run reads no step rows. Anything else (a
re-claim of a running execution, a finished or cancelled one, a full organization) takes the
function's previous path, unchanged. Same arguments, same answers.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from alembic import op

from taskloom.db.migrate import earlier_migration

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None
# The same function, replaced in place: the previous release's calls get the same answers.
breaks_previous = False

_SET_TENANT = """
    PERFORM set_config('app.org_id', p_org::text, true), set_config('app.user_id', '', true),
        set_config('app.request_id', coalesce(p_request_id, ''), true);
"""

# What the claim answers for a run; `e` is the execution as marked running.
_ANSWER = """
    RETURN jsonb_build_object(
        'claim', 'run',
        'definition', e.definition,
        'input', e.input,
        'started_at', extract(epoch FROM e.started_at),
        'triggered_by', e.triggered_by,
        'parent_execution_id', e.parent_execution_id,
        'root_execution_id', coalesce(e.root_execution_id, e.id),
        'depth', e.depth,
        'steps', CASE WHEN e.attempts = 1 THEN '[]'::jsonb ELSE (
            SELECT coalesce(jsonb_agg(jsonb_build_array(
                step_id, status, output, error, attempts, extract(epoch FROM finished_at)
            )), '[]'::jsonb)
            FROM execution_steps WHERE execution_id = p_execution
        ) END,
        'items', CASE WHEN e.attempts = 1 THEN '[]'::jsonb ELSE (
            SELECT coalesce(jsonb_agg(jsonb_build_array(
                step_id, item_index, status, output, attempts
            )), '[]'::jsonb)
            FROM execution_step_items WHERE execution_id = p_execution
        ) END
    );
"""

_CLAIM = f"""
CREATE OR REPLACE FUNCTION taskloom_claim(
    p_org uuid, p_execution uuid, p_max_running integer, p_request_id text
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    e workflow_executions%ROWTYPE;
    n_running integer;
BEGIN
    {_SET_TENANT}
    PERFORM pg_advisory_xact_lock(hashtextextended('taskloom.org_slots:' || p_org::text, 0));
    -- The usual claim: waiting to run, no cancel asked, a free slot. (Steps and items rows
    -- exist only once a run has started: attempts counts the runs, this one included.)
    UPDATE workflow_executions
    SET status = 'running', started_at = coalesce(started_at, now()), attempts = attempts + 1
    WHERE id = p_execution AND status IN ('queued', 'waiting') AND cancel_requested_at IS NULL
      AND (
          SELECT count(*) FROM (
              SELECT 1 FROM workflow_executions
              WHERE org_id = p_org AND status = 'running' LIMIT p_max_running
          ) AS r
      ) < p_max_running
    RETURNING * INTO e;
    IF FOUND THEN
        {_ANSWER}
    END IF;
    -- Anything else, as before: the row locked, then looked at.
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
    RETURNING * INTO e;
    {_ANSWER}
END $$
"""


def upgrade() -> None:
    op.execute(_CLAIM)


def downgrade() -> None:
    # 0016's claim again: its text is that migration's (read from it, not repeated here).
    previous = earlier_migration("20261206_0016_hot_path_functions.py")
    op.execute(previous._CLAIM.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
