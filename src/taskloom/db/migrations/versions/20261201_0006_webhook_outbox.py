"""Webhooks: a transactional outbox. Triggers write one `pending` delivery row per subscribed,
enabled endpoint in the same transaction as the change that causes the event (an execution
reaching a final status; a workflow created, updated or deleted), so no event is lost between a
commit and an enqueue; workers move pending rows to the `webhooks` queue.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
# Nullable columns, an index, and triggers that only add delivery rows: the previous release's
# writes succeed, and their events wait for a worker of this one.
breaks_previous = False

_EMIT = """
CREATE FUNCTION taskloom_webhook_event(p_org uuid, p_type text, p_data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_event uuid := gen_random_uuid();
BEGIN
    -- Runs with the caller's privileges and row-level security: the tenant's endpoints only.
    INSERT INTO webhook_deliveries
        (id, org_id, endpoint_id, event_id, event_type, attempt, status, request_id, payload)
    SELECT gen_random_uuid(), p_org, e.id, v_event, p_type, 1, 'pending',
           nullif(current_setting('app.request_id', true), ''),
           jsonb_build_object(
               'id', v_event,
               'type', p_type,
               'created_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'data', p_data)
    FROM webhook_endpoints e
    WHERE e.org_id = p_org AND e.enabled AND e.events ? p_type;
END $$
"""

_EXECUTION = """
CREATE FUNCTION taskloom_execution_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('succeeded', 'failed', 'cancelled')
       AND NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM taskloom_webhook_event(NEW.org_id, 'execution.' || NEW.status,
            jsonb_build_object(
                'execution_id', NEW.id,
                'workflow_id', NEW.workflow_id,
                'status', NEW.status,
                'error_code', NEW.error ->> 'code',
                'started_at', NEW.started_at,
                'finished_at', NEW.finished_at));
    END IF;
    RETURN NULL;
END $$
"""

_WORKFLOW = """
CREATE FUNCTION taskloom_workflow_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM taskloom_webhook_event(OLD.org_id, 'workflow.deleted',
            jsonb_build_object('workflow_id', OLD.id, 'name', OLD.name));
    ELSE
        PERFORM taskloom_webhook_event(NEW.org_id,
            CASE TG_OP WHEN 'INSERT' THEN 'workflow.created' ELSE 'workflow.updated' END,
            jsonb_build_object('workflow_id', NEW.id, 'name', NEW.name, 'version', NEW.version));
    END IF;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.add_column("webhook_endpoints", sa.Column("secret_key_id", sa.String(64), nullable=True))
    op.add_column("webhook_endpoints", sa.Column("description", sa.String(500), nullable=True))
    op.create_index(
        "ix_webhook_deliveries_pending",
        "webhook_deliveries",
        ["created_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.execute(_EMIT)
    op.execute(_EXECUTION)
    op.execute(_WORKFLOW)
    op.execute(
        "CREATE TRIGGER webhooks_on_execution_status AFTER UPDATE OF status "
        "ON workflow_executions FOR EACH ROW EXECUTE FUNCTION taskloom_execution_webhooks()"
    )
    op.execute(
        "CREATE TRIGGER webhooks_on_workflow_change AFTER INSERT OR UPDATE OR DELETE "
        "ON workflows FOR EACH ROW EXECUTE FUNCTION taskloom_workflow_webhooks()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER webhooks_on_workflow_change ON workflows")
    op.execute("DROP TRIGGER webhooks_on_execution_status ON workflow_executions")
    op.execute("DROP FUNCTION taskloom_workflow_webhooks()")
    op.execute("DROP FUNCTION taskloom_execution_webhooks()")
    op.execute("DROP FUNCTION taskloom_webhook_event(uuid, text, jsonb)")
    op.drop_index("ix_webhook_deliveries_pending", table_name="webhook_deliveries")
    op.drop_column("webhook_endpoints", "description")
    op.drop_column("webhook_endpoints", "secret_key_id")
