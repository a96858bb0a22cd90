"""Request and response bodies of /api/workflows."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskloom.auth.schemas import StrictModel

STEP_ID_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
MAX_STEPS = 100


class StepDefinition(StrictModel):
    id: str = Field(pattern=STEP_ID_PATTERN, description="Unique in the workflow; `steps.<id>`")
    type: str = Field(min_length=1, max_length=32, description="A registered step type")
    args: dict[str, Any] = Field(default_factory=dict, description="Jinja2 templates allowed")


class WorkflowDefinition(StrictModel):
    steps: list[StepDefinition] = Field(min_length=1, max_length=MAX_STEPS)


class WorkflowCreate(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=5_000)
    definition: WorkflowDefinition


class WorkflowUpdate(WorkflowCreate):
    pass


class WorkflowOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    definition: dict[str, Any]
    version: int
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
