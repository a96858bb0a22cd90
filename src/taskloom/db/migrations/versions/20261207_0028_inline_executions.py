"""Inline executions (issue 20, ADR 0018): a one-step execution without I/O finished by the
worker in one call, before any claim.

- `taskloom_inline_definition(definition)`: whether a definition is one `transform` step with
  nothing that needs more than its input (no `when`, `for_each`, `output`, `deadline`, no word
  `secrets` anywhere). A hint for the API, which then carries a small input in the job; the
  worker decides with its own, exact test (executions/inline.py) and falls back on the usual
  claim whenever they differ.
- `taskloom_start` (migration 0017) also answers `inline`: the execution was made and its
  definition is such a one.
- `taskloom_run_inline`: the step's row (succeeded) and the execution's end (queued →
  succeeded, attempts 1) in one statement, only if the execution is still as the worker ran it:
  queued, never claimed, no cancel asked, the very definition and input the worker used
  (compared as jsonb). It answers false otherwise, writing nothing; the worker then claims it
  the usual way. SECURITY INVOKER with the tenant it sets, as 0016's functions are.

Revision ID: 0028
Revises: 0027
"""

from __future__ import annotations

from alembic import op

from taskloom.db.migrate import earlier_migration

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None
# New functions, and `taskloom_start` answering one key more: the previous release's calls get
# the answers they read.
breaks_previous = False

_INLINE_DEFINITION = """
CREATE FUNCTION taskloom_inline_definition(d jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(
        jsonb_typeof(d -> 'steps') = 'array'
        AND jsonb_array_length(d -> 'steps') = 1
        AND d -> 'steps' -> 0 ->> 'type' = 'transform'
        AND NOT (d ?| array['output', 'deadline'])
        AND NOT ((d -> 'steps' -> 0) ?| array['when', 'for_each'])
        AND strpos(d::text, 'secrets') = 0,
        false
    )
$$
"""

_ANSWERED = "        'created_at', extract(epoch FROM created)\n"
_ANSWERED_INLINE = (
    "        'created_at', extract(epoch FROM created),\n"
    "        'inline', created IS NOT NULL AND taskloom_inline_definition(w.definition)\n"
)

_RUN_INLINE = """
CREATE FUNCTION taskloom_run_inline(
    p_org uuid, p_execution uuid, p_definition jsonb, p_input jsonb, p_step text,
    p_type text, p_step_input jsonb, p_output jsonb, p_execution_output jsonb, p_request_id text
) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('app.org_id', p_org::text, true), set_config('app.user_id', '', true),
        set_config('app.request_id', coalesce(p_request_id, ''), true);
    UPDATE workflow_executions
    SET status = 'succeeded', attempts = 1, started_at = now(), finished_at = now(),
        output = p_execution_output, error = NULL
    WHERE id = p_execution AND status = 'queued' AND attempts = 0
      AND cancel_requested_at IS NULL AND definition = p_definition AND input = p_input;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- The execution is the tenant's own (the update found it under row-level security).
    INSERT INTO execution_steps AS s (
        id, org_id, execution_id, step_id, position, type, status, attempts, started_at,
        finished_at, input, output
    ) VALUES (
        gen_random_uuid(), p_org, p_execution, p_step, 0, p_type, 'succeeded', 1, now(), now(),
        p_step_input, p_output
    )
    ON CONFLICT (execution_id, step_id) DO UPDATE SET
        status = 'succeeded', attempts = s.attempts + 1, started_at = now(),
        finished_at = now(), input = p_step_input, output = p_output, error = NULL;
    RETURN true;
END $$
"""


def _start(*, inline: bool) -> str:
    # `taskloom_start`'s text is 0017's (read from it, not repeated).
    text: str = earlier_migration("20261207_0017_start_function.py")._START
    assert text.count(_ANSWERED) == 1, "taskloom_start's answer is not where 0028 expects it"
    if inline:
        text = text.replace(_ANSWERED, _ANSWERED_INLINE)
    return text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute(_INLINE_DEFINITION)
    op.execute(_start(inline=True))
    op.execute(_RUN_INLINE)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION taskloom_run_inline(uuid, uuid, jsonb, jsonb, text, text, jsonb, jsonb, "
        "jsonb, text)"
    )
    op.execute(_start(inline=False))
    op.execute("DROP FUNCTION taskloom_inline_definition(jsonb)")
