"""An execution's start in one call (issue 20): `taskloom_start` reads the workflow and, when
asked, the organization's queued count, and inserts the queued execution unless something
refuses it (the workflow disabled, an `input_schema` the caller must check first, a full queue,
or a definition changed since that check). It answers what the caller needs to say why.

Called inside a transaction that has set its tenant (triggers, the web UI: `p_tenant` NULL) or
on its own in autocommit (`POST …/execute`: `p_tenant` names the organization, set for the
call's transaction only, with the user and request id). SECURITY INVOKER, under forced
row-level security as the statements it replaces: a workflow of another organization is not
found, and the insert's WITH CHECK holds.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None
# A function only: the previous release does not call it.
breaks_previous = False

# `p_version` NULL: the usual start (refused when disabled, with an input_schema, or with
# `p_max_queued` executions queued; `p_max_queued` NULL: not counted). `p_version` given: the
# input was checked against that version's input_schema; inserted only if it is still current.
_START = """
CREATE FUNCTION taskloom_start(
    p_tenant uuid, p_user uuid, p_request_id text, p_workflow uuid, p_execution uuid,
    p_max_queued integer, p_version integer, p_input jsonb, p_trigger_kind text,
    p_trigger_id uuid, p_depth integer, p_root uuid
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    w record;
    n_queued integer := 0;
    created timestamptz;
BEGIN
    IF p_tenant IS NOT NULL THEN
        PERFORM set_config('app.org_id', p_tenant::text, true),
            set_config('app.user_id', coalesce(p_user::text, ''), true),
            set_config('app.request_id', coalesce(p_request_id, ''), true);
    END IF;
    SELECT id, org_id, version, enabled, definition INTO w FROM workflows WHERE id = p_workflow;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_version IS NULL AND p_max_queued IS NOT NULL THEN
        SELECT count(*) INTO n_queued FROM (
            SELECT 1 FROM workflow_executions AS e
            WHERE e.org_id = w.org_id AND e.status = 'queued' LIMIT p_max_queued
        ) AS q;
    END IF;
    IF (p_version IS NULL AND (
            NOT w.enabled
            OR coalesce(w.definition -> 'input_schema', 'null'::jsonb) <> 'null'::jsonb
            OR (p_max_queued IS NOT NULL AND n_queued >= p_max_queued)))
        OR (p_version IS NOT NULL AND w.version <> p_version) THEN
        created := NULL;
    ELSE
        INSERT INTO workflow_executions (
            id, org_id, workflow_id, workflow_version, definition, triggered_by, status, input,
            request_id, trigger_kind, trigger_id, trigger_depth, root_execution_id
        ) VALUES (
            p_execution, w.org_id, w.id, w.version, w.definition, p_user, 'queued', p_input,
            p_request_id, p_trigger_kind, p_trigger_id, p_depth, p_root
        )
        RETURNING workflow_executions.created_at INTO created;
    END IF;
    RETURN jsonb_build_object(
        'org_id', w.org_id,
        'version', w.version,
        'enabled', w.enabled,
        'input_schema', w.definition -> 'input_schema',
        'queued', n_queued,
        'created_at', extract(epoch FROM created)
    );
END $$
"""

# Several starts in one transaction (the API groups the starts that arrive while one is being
# made): `taskloom_start` for each element of `p_starts`, an array of its arguments, answering
# the array of its answers. Each start sets its own tenant, so its statements see only its
# organization's rows, whatever the others' are.
_START_MANY = """
CREATE FUNCTION taskloom_start_many(p_starts jsonb) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s jsonb;
    answers jsonb := '[]'::jsonb;
BEGIN
    FOR s IN SELECT value FROM jsonb_array_elements(p_starts) LOOP
        answers := answers || jsonb_build_array(taskloom_start(
            (s ->> 0)::uuid, (s ->> 1)::uuid, s ->> 2, (s ->> 3)::uuid, (s ->> 4)::uuid,
            (s ->> 5)::integer, (s ->> 6)::integer, s -> 7, s ->> 8, (s ->> 9)::uuid,
            (s ->> 10)::integer, (s ->> 11)::uuid
        ));
    END LOOP;
    RETURN answers;
END $$
"""


def upgrade() -> None:
    op.execute(_START)
    op.execute(_START_MANY)


def downgrade() -> None:
    op.execute("DROP FUNCTION taskloom_start_many(jsonb)")
    op.execute(
        "DROP FUNCTION taskloom_start(uuid, uuid, text, uuid, uuid, integer, integer, jsonb, "
        "text, uuid, integer, uuid)"
    )
