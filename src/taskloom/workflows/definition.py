"""Checks a workflow definition at save time, beyond its shape: step types exist, step ids are
unique, argument names are those the step type knows, `needs` name other steps without a
cycle, companion fields come together, templates parse and read only steps that
run before them, and child workflows exist. Each problem is a 422 naming its field path, e.g.
`body.definition.steps.1.args.url` or `body.definition.steps.3.needs.0`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from jinja2 import Environment, TemplateError, meta, nodes
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom import safe_jsonschema
from taskloom.errors import ValidationFailed
from taskloom.executions.steps import STEP_TYPES
from taskloom.executions.templating import TemplateProblem, check_syntax, secret_references
from taskloom.workflows.control import CONTROL_ARGS, ENABLED_CONTROL_TYPES
from taskloom.workflows.graph import Graph
from taskloom.workflows.models import Workflow
from taskloom.workflows.schemas import StepDefinition, WorkflowDefinition

_PARSER = Environment(autoescape=True)  # only parses: which names and steps a template reads
_ITEM_NAMES = ("item", "index")


def _invalid(loc: list[str], message: str) -> ValidationFailed:
    where = ".".join(["body", "definition", *loc])
    return ValidationFailed(
        f"{where}: {message}",
        details={"errors": [{"loc": where.split("."), "message": message}]},
    )


async def validate_definition(
    definition: WorkflowDefinition, *, db: AsyncSession, org_id: uuid.UUID
) -> dict[str, Any]:
    """The definition as stored (plain JSON), or ValidationFailed for its first problem."""
    stored = check_offline(definition)
    await _check_children(definition, db=db, org_id=org_id)
    return stored


def check_offline(definition: WorkflowDefinition) -> dict[str, Any]:
    """Every check that needs no database (all but the child workflows' existence): what
    `taskloom workflows validate` runs on files. The definition as stored, or ValidationFailed."""
    positions: dict[str, int] = {}
    for index, step in enumerate(definition.steps):
        if step.id in positions:
            raise _invalid(["steps", str(index), "id"], f"step id {step.id!r} is used twice")
        positions[step.id] = index
    for index, step in enumerate(definition.steps):
        _check_step(["steps", str(index)], step, positions)
    stored = definition.stored()
    graph = Graph.of(stored)
    _check_cycle(graph, positions)
    for index, step in enumerate(definition.steps):
        _check_templates(["steps", str(index)], step, graph)
    everything = frozenset(graph.order)  # the output is rendered when every step is done
    for where, text in _strings(definition.output, ["output"]):
        _check_template(where, text, graph, readable=everything, dynamic_ok=True, item_ok=False)
    if definition.input_schema is not None:
        _check_input_schema(definition.input_schema)
    return stored


MAX_INPUT_SCHEMA_BYTES = 64 * 1024


def _check_input_schema(schema: dict[str, Any]) -> None:
    """A valid Draft 2020-12 schema that the safe validator can check within its budget."""
    if len(json.dumps(schema)) > MAX_INPUT_SCHEMA_BYTES:
        raise _invalid(["input_schema"], f"larger than {MAX_INPUT_SCHEMA_BYTES // 1024} KiB")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as bad:
        path = ".".join(str(p) for p in bad.path)
        raise _invalid(
            ["input_schema"],
            f"not a valid JSON Schema{f' at {path}' if path else ''}: {bad.message}",
        ) from None
    if (reason := safe_jsonschema.unsupported(schema)) is not None:
        raise _invalid(["input_schema"], reason)


def _check_step(at: list[str], step: StepDefinition, positions: dict[str, int]) -> None:
    _check_type_and_args(at, step)
    needs = step.needs or []
    for i, need in enumerate(needs):
        if need == step.id:
            raise _invalid([*at, "needs", str(i)], "a step cannot need itself")
        if need not in positions:
            raise _invalid([*at, "needs", str(i)], f"there is no step {need!r}")
        if need in needs[:i]:
            raise _invalid([*at, "needs", str(i)], f"{need!r} is listed twice")
    if step.join is not None and not step.needs:
        raise _invalid([*at, "join"], "join only applies to a step with needs")
    if step.max_parallel is not None and step.for_each is None:
        raise _invalid([*at, "max_parallel"], "max_parallel only applies to a for_each step")


def _check_type_and_args(at: list[str], step: StepDefinition) -> None:
    if step.type in ENABLED_CONTROL_TYPES:
        try:
            CONTROL_ARGS[step.type].model_validate(step.args)
        except ValidationError as exc:
            first = exc.errors()[0]
            message = str(first["msg"]).removeprefix("Value error, ")
            raise _invalid([*at, "args", *(str(p) for p in first["loc"])], message) from exc
        return
    step_type = STEP_TYPES.get(step.type)
    if step_type is None:
        known = ", ".join(sorted({*STEP_TYPES, *ENABLED_CONTROL_TYPES}))
        raise _invalid([*at, "type"], f"unknown step type {step.type!r} (known: {known})")
    fields = step_type.Args.model_fields
    names = {info.alias or name for name, info in fields.items()}
    for key in step.args:
        if key not in names:
            raise _invalid([*at, "args", key], f"{step.type} steps take no argument {key!r}")
    for name, info in fields.items():
        if info.is_required() and (info.alias or name) not in step.args:
            raise _invalid([*at, "args", info.alias or name], "this argument is required")
    if getattr(step_type, "checked_at_save", False):
        # Its arguments are checked whole (templates are text, so only the fields that must be
        # literal, such as an agent's limits and tools, can fail here).
        try:
            step_type.Args.model_validate(step.args)
        except ValidationError as exc:
            first = exc.errors()[0]
            message = str(first["msg"]).removeprefix("Value error, ")
            raise _invalid([*at, "args", *(str(p) for p in first["loc"])], message) from exc


def _check_cycle(graph: Graph, positions: dict[str, int]) -> None:
    cycle = graph.cycle()
    if cycle is None:
        return
    # cycle[0] needs cycle[-2]: point at that entry of its needs, which closes the loop.
    first, closing = cycle[0], cycle[-2]
    entry = graph.needs[first].index(closing)
    raise _invalid(
        ["steps", str(positions[first]), "needs", str(entry)],
        f"needs form a cycle: {' → '.join(cycle)}",
    )


def _check_templates(at: list[str], step: StepDefinition, graph: Graph) -> None:
    readable = graph.upstream(step.id)
    dynamic_ok = not graph.is_dag  # a chain step may read `steps` whole: all of it ran before
    fields: list[tuple[list[str], Any, bool]] = [
        (["when"], step.when, False),
        (["for_each"], step.for_each, False),
        (["args"], step.args, step.for_each is not None),
    ]
    for name, value, item_ok in fields:
        for where, text in _strings(value, [*at, *name]):
            _check_template(
                where, text, graph, readable=readable, dynamic_ok=dynamic_ok, item_ok=item_ok
            )


def _check_template(
    where: list[str],
    text: str,
    graph: Graph,
    *,
    readable: frozenset[str],
    dynamic_ok: bool,
    item_ok: bool,
) -> None:
    """Syntax, then names: `readable` are the step ids the template may read."""
    path = ".".join(["body", "definition", *where])
    try:
        check_syntax(text, path)
        secret_references(text, path)  # only `secrets.NAME`, output as it is
    except TemplateProblem as problem:
        raise ValidationFailed(
            f"{problem.path}: {problem.message}",
            details={"errors": [{"loc": problem.path.split("."), "message": problem.message}]},
        ) from problem
    if "{" not in text:
        return
    try:
        tree = _PARSER.parse(text)
    except (TemplateError, RecursionError):  # pragma: no cover - check_syntax refused it above
        return
    free = meta.find_undeclared_variables(tree)
    for name in _ITEM_NAMES:
        if name in free and not item_ok:
            raise _invalid(where, f"{name!r} is only defined in the args of a for_each step")
    if "steps" not in free:
        return
    named, dynamic = _step_references(tree)
    if dynamic and not dynamic_ok:
        raise _invalid(
            where,
            "in a definition with needs, name the steps a template reads "
            "(steps.<id> or steps['<id>']) so that they run before it",
        )
    for ref in named:
        if ref not in graph.steps:
            raise _invalid(where, f"reads step {ref!r}, but there is no such step")
        if ref not in readable:
            raise _invalid(
                where,
                f"reads step {ref!r}, which does not run before this step "
                "(it must be in its needs, directly or through the steps it needs)",
            )


def _step_references(tree: nodes.Template) -> tuple[list[str], bool]:
    """The step ids a template reads by name (`steps.x`, `steps['x']`) and whether it also reads
    `steps` some other way (whole, or with a computed key)."""
    named: list[str] = []
    for attr in tree.find_all(nodes.Getattr):
        if _is_steps(attr.node):
            named.append(attr.attr)
    for item in tree.find_all(nodes.Getitem):
        key = item.arg.value if isinstance(item.arg, nodes.Const) else None
        if _is_steps(item.node) and isinstance(key, str):
            named.append(key)
    uses = sum(1 for name in tree.find_all(nodes.Name) if _is_steps(name))
    return named, uses > len(named)


def _is_steps(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "steps" and node.ctx == "load"


def _strings(value: Any, where: list[str]) -> Iterator[tuple[list[str], str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, [*where, str(key)])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, [*where, str(i)])


async def _check_children(
    definition: WorkflowDefinition, *, db: AsyncSession, org_id: uuid.UUID
) -> None:
    """Each `workflow` step names a workflow of the caller's organization (RLS hides the rest;
    the explicit filter says so twice)."""
    wanted: dict[uuid.UUID, int] = {}
    for index, step in enumerate(definition.steps):
        if step.type == "workflow" and "workflow" in ENABLED_CONTROL_TYPES:
            wanted.setdefault(uuid.UUID(str(step.args["workflow"])), index)
    if not wanted:
        return
    rows = await db.execute(
        select(Workflow.id).where(Workflow.org_id == org_id, Workflow.id.in_(wanted))
    )
    found = set(rows.scalars())
    for workflow_id, index in wanted.items():
        if workflow_id not in found:
            raise _invalid(
                ["steps", str(index), "args", "workflow"],
                "there is no workflow with this id in this organization",
            )
