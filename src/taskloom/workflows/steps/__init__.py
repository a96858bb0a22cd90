"""The step registry: every step type a workflow definition may use, by name."""

from __future__ import annotations

from taskloom.workflows.steps.base import (
    RetryableStepError,
    StepArgs,
    StepContext,
    StepError,
    StepType,
)
from taskloom.workflows.steps.http import HttpStep
from taskloom.workflows.steps.transform import TransformStep

STEP_TYPES: dict[str, StepType] = {}


def register(step_type: StepType) -> None:
    """Make a step type available to definitions (later issues add `ai` and `tool`)."""
    if step_type.name in STEP_TYPES:
        raise ValueError(f"step type {step_type.name!r} is already registered")
    STEP_TYPES[step_type.name] = step_type


register(HttpStep())
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
