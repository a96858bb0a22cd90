"""Workflow templates: five real workflows shipped as files (workflows/template_files/*.yaml),
copied by `taskloom workflows init --template NAME DIR` and offered by the web UI's "New
workflow" page (docs/WORKFLOWS-AS-CODE.md, Templates). Each is checked like any workflow file
and tested end to end against the suite's fakes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from taskloom.workflows.files import SCHEMA_PATH, WorkflowFile, check, parse

_SHIPPED_SCHEMA = f"https://taskloom.dev{SCHEMA_PATH}"  # the schema's $id, in each template


@dataclass(frozen=True)
class Template:
    name: str  # the file's stem, its key
    text: str  # the file as shipped (its comments say what it needs)
    workflow: WorkflowFile


@cache
def available() -> dict[str, Template]:
    """Every shipped template by name, in name order."""
    folder = resources.files("taskloom.workflows").joinpath("template_files")
    found: dict[str, Template] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        text = entry.read_text(encoding="utf-8")
        workflow, problems = check(parse(text, Path(entry.name)), Path(entry.name))
        if workflow is None:  # a test keeps every shipped template valid
            raise RuntimeError("; ".join(str(p) for p in problems))
        found[entry.name.removesuffix(".yaml")] = Template(
            name=entry.name.removesuffix(".yaml"), text=text, workflow=workflow
        )
    return found


class UnknownTemplate(LookupError):
    pass


def copy(name: str, directory: Path, *, server: str | None = None) -> Path:
    """Write template `name` into `directory` as `<name>.yaml` (its schema line pointing at
    `server` when given); FileExistsError rather than overwrite, UnknownTemplate for a name not
    shipped."""
    template = available().get(name)
    if template is None:
        raise UnknownTemplate(name)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.yaml"
    text = template.text
    if server:
        text = text.replace(_SHIPPED_SCHEMA, server.rstrip("/") + SCHEMA_PATH, 1)
    with target.open("x", encoding="utf-8") as handle:  # "x": never overwrite
        handle.write(text)
    return target
