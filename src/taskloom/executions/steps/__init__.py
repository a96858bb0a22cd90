"""The step registry: every step type a workflow definition may use, by name."""

from __future__ import annotations

from taskloom.executions.steps.agent import AgentStep
from taskloom.executions.steps.ai import AiStep
from taskloom.executions.steps.base import (
    RetryableStepError,
    StepArgs,
    StepContext,
    StepError,
    StepType,
)
from taskloom.executions.steps.http import HttpStep
from taskloom.executions.steps.tool import ToolStep
from taskloom.executions.steps.transform import TransformStep

STEP_TYPES: dict[str, StepType] = {}


def register(step_type: StepType) -> None:
    """Make a step type available to definitions."""
    if step_type.name in STEP_TYPES:
        raise ValueError(f"step type {step_type.name!r} is already registered")
    STEP_TYPES[step_type.name] = step_type


register(AgentStep())
register(AiStep())
register(HttpStep())
register(ToolStep())
register(TransformStep())

__all__ = [
    "STEP_TYPES",
    "RetryableStepError",
    "StepArgs",
    "StepContext",
    "StepError",
    "StepType",
    "register",
]
