"""The one enumerated list of audit actions. Add new actions here, nowhere else."""

from enum import StrEnum


class AuditAction(StrEnum):
    AUTH_REGISTER = "auth.register"
    AUTH_LOGIN = "auth.login"
    AUTH_LOGIN_FAILED = "auth.login_failed"
    AUTH_REFRESH = "auth.refresh"
    AUTH_REFRESH_REUSE = "auth.refresh_reuse_detected"
    AUTH_LOGOUT = "auth.logout"
    AUTH_LOGOUT_ALL = "auth.logout_all"
    AUTH_SWITCH_ORG = "auth.switch_org"
    AUTH_PASSWORD_CHANGE = "auth.password_change"  # noqa: S105 (an action name)
    API_KEY_CREATE = "api_key.create"
    API_KEY_REVOKE = "api_key.revoke"
    USER_CREATE = "user.create"
    ORG_CREATE = "org.create"
    ORG_UPDATE = "org.update"
    MEMBER_INVITE = "member.invite"
    MEMBER_INVITE_ACCEPT = "member.invite_accept"  # the membership is created
    MEMBER_INVITE_DECLINE = "member.invite_decline"
    MEMBER_INVITE_REVOKE = "member.invite_revoke"
    MEMBER_ROLE_CHANGE = "member.role_change"
    MEMBER_REMOVE = "member.remove"
    WORKFLOW_CREATE = "workflow.create"
    WORKFLOW_UPDATE = "workflow.update"
    WORKFLOW_DELETE = "workflow.delete"
    WORKFLOW_RESTORE = "workflow.restore"  # a new version equal to an earlier one
    EXECUTION_CANCEL = "execution.cancel"
    EXECUTION_RETRY = "execution.retry"
    EXECUTION_APPROVE = "execution.approve"  # an approval step's decision
    EXECUTION_REJECT = "execution.reject"
    CONNECTION_CREATE = "connection.create"
    CONNECTION_UPDATE = "connection.update"
    CONNECTION_DELETE = "connection.delete"
    CONNECTION_TEST = "connection.test"
    CONNECTION_KEYS_ROTATE = "connection.keys_rotate"
    SECRET_CREATE = "secret.create"  # noqa: S105 (an action name)
    SECRET_REPLACE = "secret.replace"  # noqa: S105 (an action name)
    SECRET_DELETE = "secret.delete"  # noqa: S105 (an action name)
    AI_BUDGET_UPDATE = "ai.budget_update"
    AI_WORKFLOW_BUDGET_UPDATE = "ai.workflow_budget_update"
    SCHEDULE_CREATE = "schedule.create"
    SCHEDULE_UPDATE = "schedule.update"  # includes pause and resume
    SCHEDULE_DELETE = "schedule.delete"
    TRIGGER_CREATE = "trigger.create"
    TRIGGER_UPDATE = "trigger.update"
    TRIGGER_DELETE = "trigger.delete"
    TRIGGER_ROTATE_SECRET = "trigger.rotate_secret"  # noqa: S105 (an action name)
    WEBHOOK_CREATE = "webhook.create"
    WEBHOOK_UPDATE = "webhook.update"
    WEBHOOK_DELETE = "webhook.delete"
    WEBHOOK_ROTATE_SECRET = "webhook.rotate_secret"  # noqa: S105 (an action name)
    WEBHOOK_TEST = "webhook.test"
    WEBHOOK_DISABLED = "webhook.disabled"
    FLAG_CREATE = "flag.create"
    FLAG_UPDATE = "flag.update"
    FLAG_DELETE = "flag.delete"
    FLAG_OVERRIDE_SET = "flag.override_set"
    FLAG_OVERRIDE_DELETE = "flag.override_delete"
    USER_ERASED = "user.erased"
    GDPR_EXPORT = "gdpr.export"
    AUDIT_READ = "audit.read"
    AUDIT_VERIFY = "audit.verify"
