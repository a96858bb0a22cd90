"""Every model, so `Base.metadata` knows all tables.

The process entry points import this module (runtime.py for the API and worker, cli.py, Alembic's
env.py, the tests); code below them (db/, the domains) relies on `Base.metadata` being complete
without importing it, because this floor sits above the domains it lists."""

from taskloom.ai.models import AiBudgetMonth, AiUsage, AiUsageDaily, AiWorkflowBudgetMonth
from taskloom.audit.models import AuditChainHead, AuditLog
from taskloom.auth.models import ApiKey, RefreshToken, Session, User
from taskloom.db.base import Base
from taskloom.db.revisions import SchemaRevision
from taskloom.executions.models import (
    ExecutionApproval,
    ExecutionStep,
    ExecutionStepItem,
    IdempotencyKey,
    WorkflowExecution,
)
from taskloom.flags.models import FeatureFlag, FeatureFlagOverride
from taskloom.gdpr.models import GdprExportFile, GdprRequest
from taskloom.orgs.models import Invitation, Membership, Organization
from taskloom.secrets.models import OrgSecret
from taskloom.sso.models import SsoGroupMapping, SsoIdentity, SsoProvider, SsoSession
from taskloom.tools.models import ToolConnection
from taskloom.triggers.models import (
    ScheduleTick,
    TriggerDelivery,
    WorkflowSchedule,
    WorkflowTrigger,
)
from taskloom.webhooks.models import WebhookDelivery, WebhookEndpoint
from taskloom.workflows.models import Workflow, WorkflowVersion

metadata = Base.metadata

__all__ = [
    "AiBudgetMonth",
    "AiUsage",
    "AiUsageDaily",
    "AiWorkflowBudgetMonth",
    "ApiKey",
    "AuditChainHead",
    "AuditLog",
    "ExecutionApproval",
    "ExecutionStep",
    "ExecutionStepItem",
    "FeatureFlag",
    "FeatureFlagOverride",
    "GdprExportFile",
    "GdprRequest",
    "IdempotencyKey",
    "Invitation",
    "Membership",
    "OrgSecret",
    "Organization",
    "RefreshToken",
    "ScheduleTick",
    "SchemaRevision",
    "Session",
    "SsoGroupMapping",
    "SsoIdentity",
    "SsoProvider",
    "SsoSession",
    "ToolConnection",
    "TriggerDelivery",
    "User",
    "WebhookDelivery",
    "WebhookEndpoint",
    "Workflow",
    "WorkflowExecution",
    "WorkflowSchedule",
    "WorkflowTrigger",
    "WorkflowVersion",
    "metadata",
]
