"""Workflow versions (issue 21): `workflow_versions`, one immutable row per create, `PUT` and
restore of a workflow (name, description, definition, its triggers' and schedules' snapshot,
author, time, message). Row-level security per organization, ENABLEd and FORCEd; the
application role may only insert and read it (`taskloom migrate` revokes UPDATE and DELETE, from
the model's `AppAccess.APPEND_ONLY`). Every existing workflow gets its current state as its
current version, so no history is empty.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None
# A new table: the previous release never reads it, and its saves simply store no version
# (the next save of this release stores one, numbered after them).
breaks_previous = False

# The snapshot's form is triggers/snapshot.py's: each trigger and schedule as its creation body
# with its id, never a secret.
_BACKFILL = """
INSERT INTO workflow_versions (
    id, org_id, workflow_id, number, name, description, definition, triggers, schedules,
    message, created_by, created_at
)
SELECT
    gen_random_uuid(), w.org_id, w.id, w.version, w.name, w.description, w.definition,
    coalesce((
        SELECT jsonb_agg(
            CASE WHEN t.kind = 'webhook' THEN jsonb_build_object(
                'id', t.id::text, 'kind', t.kind, 'enabled', t.enabled,
                'description', t.description, 'verification', t.verification,
                'response', t.response, 'sync_timeout_seconds', t.sync_timeout_seconds)
            ELSE jsonb_build_object(
                'id', t.id::text, 'kind', t.kind, 'enabled', t.enabled,
                'description', t.description,
                'on', jsonb_build_object(
                    'workflow', t.event_workflow_id::text,
                    'status', coalesce((
                        SELECT jsonb_agg(s ORDER BY s)
                        FROM jsonb_array_elements_text(t.event_statuses) AS s
                    ), '[]'::jsonb)))
            END ORDER BY t.created_at, t.id)
        FROM workflow_triggers AS t WHERE t.workflow_id = w.id
    ), '[]'::jsonb),
    coalesce((
        SELECT jsonb_agg(jsonb_build_object(
            'id', s.id::text, 'cron', s.cron, 'timezone', s.timezone, 'input', s.input,
            'enabled', s.enabled, 'overlap', s.overlap, 'catch_up', s.catch_up
        ) ORDER BY s.created_at, s.id)
        FROM workflow_schedules AS s WHERE s.workflow_id = w.id
    ), '[]'::jsonb),
    'Recorded when version history began',
    coalesce(w.updated_by, w.created_by),
    w.updated_at
FROM workflows AS w
"""


def upgrade() -> None:
    op.create_table(
        "workflow_versions",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("workflow_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("definition", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "triggers", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False
        ),
        sa.Column(
            "schedules",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="[]",
            nullable=False,
        ),
        sa.Column("message", sa.String(length=500), nullable=True),
        sa.Column("restored_from", sa.Integer(), nullable=True),
        sa.Column("created_by", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_workflow_versions_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_workflow_versions_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_workflow_versions_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_versions")),
        sa.UniqueConstraint(
            "workflow_id", "number", name=op.f("uq_workflow_versions_workflow_id_number")
        ),
    )
    op.create_index(
        "ix_workflow_versions_created_by", "workflow_versions", ["created_by"], unique=False
    )
    op.create_index("ix_workflow_versions_org_id", "workflow_versions", ["org_id"], unique=False)
    op.execute("ALTER TABLE workflow_versions ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE workflow_versions FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON workflow_versions AS PERMISSIVE FOR ALL TO PUBLIC "
        "USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org())"
    )
    op.execute(_BACKFILL)


def downgrade() -> None:
    op.drop_index("ix_workflow_versions_org_id", table_name="workflow_versions")
    op.drop_index("ix_workflow_versions_created_by", table_name="workflow_versions")
    op.drop_table("workflow_versions")
