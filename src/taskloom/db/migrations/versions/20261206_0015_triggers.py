"""Triggers (issue 19): `enabled` on workflows; what started an execution (`trigger_kind`,
`trigger_id`, `trigger_depth`); `idempotency_keys` (unique per workflow and key);
`workflow_schedules` and their `schedule_ticks` (unique per schedule and tick time: a tick starts
one execution however many workers look); `workflow_triggers` (webhook and event) and their
`trigger_deliveries`. An event trigger is fed by an outbox trigger on `workflow_executions`: the
transaction that ends an execution writes one `pending` delivery per event trigger listening to
its workflow, so no end is lost between a commit and a worker. `taskloom_webhook_trigger_org`
tells `POST /hooks/{id}` (which carries no credentials) its trigger's organization, nothing else.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None
# New tables, and new columns that are nullable or defaulted: the previous release's writes
# succeed (its executions read as API starts, its workflows as enabled). The outbox trigger only
# adds delivery rows, which wait for a worker of this release.
breaks_previous = False

_TABLES = (
    "workflow_triggers",
    "idempotency_keys",
    "trigger_deliveries",
    "workflow_schedules",
    "schedule_ticks",
)

# Runs with the caller's privileges and row-level security: the tenant's triggers only. The
# workflow whose end this is, not a trigger's own workflow, is the one listened to; a disabled
# trigger writes nothing.
_EVENT_OUTBOX = """
CREATE FUNCTION taskloom_event_triggers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('succeeded', 'failed', 'cancelled')
       AND NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO trigger_deliveries
            (id, org_id, trigger_id, status, source_execution_id, delivery_id)
        SELECT gen_random_uuid(), NEW.org_id, t.id, 'pending', NEW.id,
               NEW.id::text || ':' || NEW.status || ':' || NEW.attempts::text
        FROM workflow_triggers t
        WHERE t.kind = 'event' AND t.event_workflow_id = NEW.workflow_id
          AND t.org_id = NEW.org_id AND t.enabled AND t.event_statuses ? NEW.status;
    END IF;
    RETURN NULL;
END $$
"""

# POST /hooks/{id} carries no credentials, only the trigger's id: this answers with the
# trigger's organization and nothing else, so the request's one transaction can set its tenant
# and read the rest under row-level security. SECURITY DEFINER: it runs as its owner, the
# migrating role, which bypasses row-level security (db/engine.py checks it does); search_path
# pinned so no caller's schema can stand in for the table.
_TRIGGER_ORG = """
CREATE FUNCTION taskloom_webhook_trigger_org(p_trigger uuid) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT org_id FROM public.workflow_triggers WHERE id = p_trigger AND kind = 'webhook'
$$
"""


def upgrade() -> None:
    op.create_table(
        "workflow_triggers",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("workflow_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("verification", sa.String(length=16), nullable=True),
        sa.Column("response", sa.String(length=8), nullable=True),
        sa.Column("sync_timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("secret_key_id", sa.String(length=64), nullable=True),
        sa.Column("encrypted_secret", sa.LargeBinary(), nullable=True),
        sa.Column("encrypted_previous_secret", sa.LargeBinary(), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("event_workflow_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("event_statuses", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_by", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind in ('webhook', 'event')", name=op.f("ck_workflow_triggers_kind_valid")
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_workflow_triggers_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["event_workflow_id"],
            ["workflows.id"],
            name=op.f("fk_workflow_triggers_event_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_workflow_triggers_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_workflow_triggers_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_triggers")),
    )
    op.create_index(
        "ix_workflow_triggers_created_by", "workflow_triggers", ["created_by"], unique=False
    )
    op.create_index(
        "ix_workflow_triggers_event_workflow_id",
        "workflow_triggers",
        ["event_workflow_id"],
        unique=False,
        postgresql_where="kind = 'event'",
    )
    op.create_index("ix_workflow_triggers_org_id", "workflow_triggers", ["org_id"], unique=False)
    op.create_index(
        "ix_workflow_triggers_workflow_id", "workflow_triggers", ["workflow_id"], unique=False
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("workflow_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("execution_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["workflow_executions.id"],
            name=op.f("fk_idempotency_keys_execution_id_workflow_executions"),
            ondelete="CASCADE",
            initially="DEFERRED",
            deferrable=True,
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_idempotency_keys_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_idempotency_keys_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("workflow_id", "key", name=op.f("uq_idempotency_keys_workflow_id_key")),
    )
    op.create_index(
        "ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"], unique=False
    )
    op.create_index(
        "ix_idempotency_keys_execution_id", "idempotency_keys", ["execution_id"], unique=False
    )
    op.create_index("ix_idempotency_keys_org_id", "idempotency_keys", ["org_id"], unique=False)
    op.create_table(
        "trigger_deliveries",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("trigger_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("delivery_id", sa.String(length=300), nullable=True),
        sa.Column("execution_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("source_execution_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status in ('pending', 'accepted', 'rejected')",
            name=op.f("ck_trigger_deliveries_status_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["workflow_executions.id"],
            name=op.f("fk_trigger_deliveries_execution_id_workflow_executions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_trigger_deliveries_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_execution_id"],
            ["workflow_executions.id"],
            name=op.f("fk_trigger_deliveries_source_execution_id_workflow_executions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["trigger_id"],
            ["workflow_triggers.id"],
            name=op.f("fk_trigger_deliveries_trigger_id_workflow_triggers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trigger_deliveries")),
    )
    op.create_index(
        "ix_trigger_deliveries_execution_id", "trigger_deliveries", ["execution_id"], unique=False
    )
    op.create_index("ix_trigger_deliveries_org_id", "trigger_deliveries", ["org_id"], unique=False)
    op.create_index(
        "ix_trigger_deliveries_pending",
        "trigger_deliveries",
        ["created_at"],
        unique=False,
        postgresql_where="status = 'pending'",
    )
    op.create_index(
        "ix_trigger_deliveries_trigger_id_created_at",
        "trigger_deliveries",
        ["trigger_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_trigger_deliveries_trigger_id_status_created_at",
        "trigger_deliveries",
        ["trigger_id", "status", "created_at"],
        unique=False,
    )
    op.create_table(
        "workflow_schedules",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("workflow_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("cron", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column(
            "input", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("overlap", sa.String(length=8), server_default="skip", nullable=False),
        sa.Column("catch_up", sa.String(length=8), server_default="none", nullable=False),
        sa.Column("next_tick_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_execution_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("queued_ticks", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_by", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "catch_up in ('none', 'one', 'all')", name=op.f("ck_workflow_schedules_catch_up_valid")
        ),
        sa.CheckConstraint(
            "overlap in ('skip', 'allow', 'queue')",
            name=op.f("ck_workflow_schedules_overlap_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_workflow_schedules_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["last_execution_id"],
            ["workflow_executions.id"],
            name=op.f("fk_workflow_schedules_last_execution_id_workflow_executions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_workflow_schedules_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_workflow_schedules_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_schedules")),
    )
    op.create_index(
        "ix_workflow_schedules_created_by", "workflow_schedules", ["created_by"], unique=False
    )
    op.create_index(
        "ix_workflow_schedules_due",
        "workflow_schedules",
        ["next_tick_at"],
        unique=False,
        postgresql_where="enabled",
    )
    op.create_index("ix_workflow_schedules_org_id", "workflow_schedules", ["org_id"], unique=False)
    op.create_index(
        "ix_workflow_schedules_queued",
        "workflow_schedules",
        ["id"],
        unique=False,
        postgresql_where="queued_ticks > 0",
    )
    op.create_index(
        "ix_workflow_schedules_workflow_id", "workflow_schedules", ["workflow_id"], unique=False
    )
    op.create_table(
        "schedule_ticks",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("schedule_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("tick_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("execution_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status in ('started', 'queued', 'skipped', 'failed')",
            name=op.f("ck_schedule_ticks_status_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["workflow_executions.id"],
            name=op.f("fk_schedule_ticks_execution_id_workflow_executions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_schedule_ticks_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["workflow_schedules.id"],
            name=op.f("fk_schedule_ticks_schedule_id_workflow_schedules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_ticks")),
        sa.UniqueConstraint(
            "schedule_id", "tick_at", name=op.f("uq_schedule_ticks_schedule_id_tick_at")
        ),
    )
    op.create_index(
        "ix_schedule_ticks_execution_id", "schedule_ticks", ["execution_id"], unique=False
    )
    op.create_index("ix_schedule_ticks_org_id", "schedule_ticks", ["org_id"], unique=False)
    op.add_column(
        "workflow_executions", sa.Column("trigger_kind", sa.String(length=16), nullable=True)
    )
    op.add_column(
        "workflow_executions", sa.Column("trigger_id", postgresql.UUID(as_uuid=True), nullable=True)
    )
    op.add_column(
        "workflow_executions",
        sa.Column("trigger_depth", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "workflows", sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False)
    )
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} AS PERMISSIVE FOR ALL TO PUBLIC "
            "USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org())"
        )
    op.execute(_EVENT_OUTBOX)
    op.execute(_TRIGGER_ORG)
    op.execute(
        "CREATE TRIGGER event_triggers_on_execution_status AFTER UPDATE OF status "
        "ON workflow_executions FOR EACH ROW EXECUTE FUNCTION taskloom_event_triggers()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER event_triggers_on_execution_status ON workflow_executions")
    op.execute("DROP FUNCTION taskloom_event_triggers()")
    op.execute("DROP FUNCTION taskloom_webhook_trigger_org(uuid)")
    op.drop_column("workflows", "enabled")
    op.drop_column("workflow_executions", "trigger_depth")
    op.drop_column("workflow_executions", "trigger_id")
    op.drop_column("workflow_executions", "trigger_kind")
    op.drop_index("ix_schedule_ticks_org_id", table_name="schedule_ticks")
    op.drop_index("ix_schedule_ticks_execution_id", table_name="schedule_ticks")
    op.drop_table("schedule_ticks")
    op.drop_index("ix_workflow_schedules_workflow_id", table_name="workflow_schedules")
    op.drop_index(
        "ix_workflow_schedules_queued",
        table_name="workflow_schedules",
        postgresql_where="queued_ticks > 0",
    )
    op.drop_index("ix_workflow_schedules_org_id", table_name="workflow_schedules")
    op.drop_index(
        "ix_workflow_schedules_due", table_name="workflow_schedules", postgresql_where="enabled"
    )
    op.drop_index("ix_workflow_schedules_created_by", table_name="workflow_schedules")
    op.drop_table("workflow_schedules")
    op.drop_index(
        "ix_trigger_deliveries_trigger_id_status_created_at", table_name="trigger_deliveries"
    )
    op.drop_index("ix_trigger_deliveries_trigger_id_created_at", table_name="trigger_deliveries")
    op.drop_index(
        "ix_trigger_deliveries_pending",
        table_name="trigger_deliveries",
        postgresql_where="status = 'pending'",
    )
    op.drop_index("ix_trigger_deliveries_org_id", table_name="trigger_deliveries")
    op.drop_index("ix_trigger_deliveries_execution_id", table_name="trigger_deliveries")
    op.drop_table("trigger_deliveries")
    op.drop_index("ix_idempotency_keys_org_id", table_name="idempotency_keys")
    op.drop_index("ix_idempotency_keys_execution_id", table_name="idempotency_keys")
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_workflow_triggers_workflow_id", table_name="workflow_triggers")
    op.drop_index("ix_workflow_triggers_org_id", table_name="workflow_triggers")
    op.drop_index(
        "ix_workflow_triggers_event_workflow_id",
        table_name="workflow_triggers",
        postgresql_where="kind = 'event'",
    )
    op.drop_index("ix_workflow_triggers_created_by", table_name="workflow_triggers")
    op.drop_table("workflow_triggers")
