"""The control step types of a definition: `wait`, `approval` and `workflow`. The engine runs
them itself (they hold no worker slot), so they are not in the step registry; their arguments
are checked here when a definition is saved and stored as written."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from taskloom.workflows.durations import Duration, parse_duration

MAX_APPROVAL_TIMEOUT = timedelta(days=30)
DEFAULT_APPROVAL_TIMEOUT = "24h"  # a working day and a night: long enough, short enough to notice
MAX_APPROVERS = 50
MAX_MESSAGE_CHARS = 2_000


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class WaitArgs(_Args):
    """`{"for": "<duration>"}` or `{"until": "<RFC 3339 time with a timezone>"}`."""

    for_: Duration | None = Field(default=None, alias="for")
    until: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_of(self) -> WaitArgs:
        if (self.for_ is None) == (self.until is None):
            raise ValueError('give exactly one of "for" (a duration) or "until" (a time)')
        return self


class Approvers(_Args):
    """`{"role": ...}` (that role or a higher one) or `{"users": [ids]}`."""

    role: Literal["member", "admin", "owner"] | None = None
    users: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=MAX_APPROVERS)

    @field_validator("users")
    @classmethod
    def _unique(cls, users: list[uuid.UUID] | None) -> list[uuid.UUID] | None:
        if users is not None and len(set(users)) != len(users):
            raise ValueError("a user is listed twice")
        return users

    @model_validator(mode="after")
    def _one_of(self) -> Approvers:
        if (self.role is None) == (self.users is None):
            raise ValueError('give exactly one of "role" or "users"')
        return self


class ApprovalArgs(_Args):
    """Who may decide, what they are asked, and what happens when nobody does."""

    approvers: Approvers
    message: str = Field(default="", max_length=MAX_MESSAGE_CHARS, description="A template")
    timeout: Duration = DEFAULT_APPROVAL_TIMEOUT
    on_timeout: Literal["approve", "reject", "fail"] = "reject"

    @field_validator("timeout")
    @classmethod
    def _at_most_30_days(cls, timeout: str) -> str:
        if parse_duration(timeout) > MAX_APPROVAL_TIMEOUT:
            raise ValueError(f"at most {MAX_APPROVAL_TIMEOUT.days} days")
        return timeout


class WorkflowArgs(_Args):
    """Start a child execution of a workflow of the same organization and wait for it."""

    workflow: uuid.UUID
    input: dict[str, Any] = Field(default_factory=dict, description="Templates allowed")


CONTROL_ARGS: dict[str, type[_Args]] = {
    "wait": WaitArgs,
    "approval": ApprovalArgs,
    "workflow": WorkflowArgs,
}

# The control types a definition may use: the engine's switch for each construct.
ENABLED_CONTROL_TYPES: frozenset[str] = frozenset({"wait", "approval", "workflow"})
