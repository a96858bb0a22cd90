"""Checks a workflow definition at save time, beyond its shape: step types exist, step ids are
unique, argument names are those the step type knows, templates parse. Each problem is a 422
naming its field path, e.g. `body.definition.steps.1.args.url`."""

from __future__ import annotations

from typing import Any

from taskloom.errors import ValidationFailed
from taskloom.executions.steps import STEP_TYPES
from taskloom.executions.templating import TemplateProblem, check_syntax
from taskloom.workflows.schemas import WorkflowDefinition


def _invalid(loc: list[str], message: str) -> ValidationFailed:
    where = ".".join(["body", "definition", *loc])
    return ValidationFailed(
        f"{where}: {message}",
        details={"errors": [{"loc": where.split("."), "message": message}]},
    )


def validate_definition(definition: WorkflowDefinition) -> dict[str, Any]:
    """The definition as stored (plain JSON), or ValidationFailed for its first problem."""
    seen: set[str] = set()
    for index, step in enumerate(definition.steps):
        at = ["steps", str(index)]
        if step.id in seen:
            raise _invalid([*at, "id"], f"step id {step.id!r} is used twice")
        seen.add(step.id)
        step_type = STEP_TYPES.get(step.type)
        if step_type is None:
            known = ", ".join(sorted(STEP_TYPES))
            raise _invalid([*at, "type"], f"unknown step type {step.type!r} (known: {known})")
        fields = step_type.Args.model_fields
        names = {info.alias or name for name, info in fields.items()}
        for key in step.args:
            if key not in names:
                raise _invalid([*at, "args", key], f"{step.type} steps take no argument {key!r}")
        for name, info in fields.items():
            if info.is_required() and (info.alias or name) not in step.args:
                raise _invalid([*at, "args", info.alias or name], "this argument is required")
        try:
            check_syntax(step.args, ".".join(["body", "definition", *at, "args"]))
        except TemplateProblem as problem:
            raise ValidationFailed(
                f"{problem.path}: {problem.message}",
                details={"errors": [{"loc": problem.path.split("."), "message": problem.message}]},
            ) from problem
    return definition.model_dump(mode="json")
