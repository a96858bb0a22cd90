"""Imports every domain's models so `Base.metadata` knows all tables (Alembic, tests)."""

from taskloom.ai.models import AiUsage, AiUsageDaily
from taskloom.audit.models import AuditChainHead, AuditLog
from taskloom.auth.models import ApiKey, RefreshToken, Session, User
from taskloom.db.base import Base
from taskloom.db.revisions import SchemaRevision
from taskloom.executions.models import ExecutionStep, WorkflowExecution
from taskloom.flags.models import FeatureFlag, FeatureFlagOverride
from taskloom.gdpr.models import GdprExportFile, GdprRequest
from taskloom.orgs.models import Invitation, Membership, Organization
from taskloom.tools.models import ToolConnection
from taskloom.webhooks.models import WebhookDelivery, WebhookEndpoint
from taskloom.workflows.models import Workflow

metadata = Base.metadata

__all__ = [
    "AiUsage",
    "AiUsageDaily",
    "ApiKey",
    "AuditChainHead",
    "AuditLog",
    "ExecutionStep",
    "FeatureFlag",
    "FeatureFlagOverride",
    "GdprExportFile",
    "GdprRequest",
    "Invitation",
    "Membership",
    "Organization",
    "RefreshToken",
    "SchemaRevision",
    "Session",
    "ToolConnection",
    "User",
    "WebhookDelivery",
    "WebhookEndpoint",
    "Workflow",
    "WorkflowExecution",
    "metadata",
]
