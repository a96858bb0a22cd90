"""Which tables are tenant-isolated, and how. The migrations create the policies; this registry
lets tests and `taskloom doctor` check that every table is covered and FORCEd."""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    ORG = "org"  # rows belong to one organization: org_id = app.org_id
    USER = "user"  # rows belong to one user: user_id = app.user_id
    SPECIAL = "special"  # org/user mix, see the migration that defines the policies


ISOLATED_TABLES: dict[str, Scope] = {
    "organizations": Scope.SPECIAL,
    "memberships": Scope.SPECIAL,
    "invitations": Scope.SPECIAL,
    "users": Scope.SPECIAL,
    "sessions": Scope.USER,
    "refresh_tokens": Scope.USER,
    "api_keys": Scope.USER,
    "gdpr_requests": Scope.USER,
    "workflows": Scope.ORG,
    "workflow_executions": Scope.ORG,
    "execution_steps": Scope.ORG,
    "ai_usage": Scope.ORG,
    "ai_usage_daily": Scope.ORG,
    "ai_budget_months": Scope.ORG,
    "tool_connections": Scope.ORG,
    "webhook_endpoints": Scope.ORG,
    "webhook_deliveries": Scope.ORG,
    "feature_flag_overrides": Scope.SPECIAL,
    "audit_logs": Scope.SPECIAL,
    "audit_chain_heads": Scope.ORG,
}

# Tables deliberately without row-level security, and why.
SHARED_TABLES: dict[str, str] = {
    "feature_flags": "global flag definitions; only instance administrators may change them",
    "alembic_version": "migration bookkeeping; the application role may only read it",
    "schema_revisions": "applied migrations and their breaks_previous; the app role only reads it",
    "gdpr_export_files": "queued export archives; the application role has no privilege on it",
}

# Tables only the privileged role may touch (REVOKE ALL from the application role).
SYSTEM_ONLY_TABLES = ("gdpr_export_files",)

# Tables the application role may read and append to but never change.
APPEND_ONLY_TABLES = ("audit_logs",)

# Tables the application role may only read (writes go through the privileged role, after the
# service has checked who is asking): global feature flags are changed by instance admins only.
READ_ONLY_TABLES = ("feature_flags",)
