"""Workflow files (workflows as code, docs/WORKFLOWS-AS-CODE.md): their format, the JSON Schema
editors check them with, and reading, checking and writing them. A file holds one workflow:
`key`, `name`, `description`, `definition` and `triggers` (schedules, webhook and event
triggers as docs/TRIGGERS.md describes them, never a secret). A file is checked with the API's
own models and its offline checks (workflows/definition.check_offline); what needs the
database (a child workflow's id, an event trigger's workflow key) is checked on push."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml  # type: ignore[import-untyped]  # PyYAML ships no type hints
from pydantic import Field, ValidationError

from taskloom.auth.schemas import StrictModel
from taskloom.errors import ValidationFailed
from taskloom.triggers.schedule_schemas import ScheduleCreate
from taskloom.triggers.schemas import MAX_SYNC_TIMEOUT_SECONDS, EndStatus, Response
from taskloom.triggers.verification import Scheme
from taskloom.workflows.definition import check_offline
from taskloom.workflows.schemas import KEY_PATTERN, WorkflowDefinition

SCHEMA_PATH = "/api/schema/workflow.json"
SUFFIXES = (".yaml", ".yml", ".json")
STATE_FILE = ".taskloom-state.json"


class ScheduleTrigger(ScheduleCreate):
    """A schedule (docs/TRIGGERS.md, Schedules)."""

    kind: Literal["schedule"]


class WebhookTrigger(StrictModel):
    """A webhook trigger; its secret is never in a file: push creates it and shows it once."""

    kind: Literal["webhook"]
    verification: Scheme = Field(description="How `POST /hooks/{id}` requests are verified")
    response: Response = "async"
    sync_timeout_seconds: int = Field(default=10, ge=1, le=MAX_SYNC_TIMEOUT_SECONDS)
    enabled: bool = True
    description: str | None = Field(default=None, max_length=500)


class EventOnKey(StrictModel):
    workflow: str = Field(pattern=KEY_PATTERN, description="The key of the watched workflow")
    status: list[EndStatus] = Field(default=["succeeded"], min_length=1, max_length=3)


class EventTrigger(StrictModel):
    """Starts the workflow when another one (named by its key) ends."""

    kind: Literal["event"]
    on: EventOnKey
    enabled: bool = True
    description: str | None = Field(default=None, max_length=500)


FileTrigger = Annotated[
    ScheduleTrigger | WebhookTrigger | EventTrigger, Field(discriminator="kind")
]


class WorkflowFile(StrictModel):
    """One workflow as a file."""

    key: str = Field(
        pattern=KEY_PATTERN,
        description="Stable and unique in the organization: push and pull match on it",
    )
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=5_000)
    definition: WorkflowDefinition
    triggers: list[FileTrigger] = Field(default_factory=list, max_length=50)

    def document(self) -> dict[str, Any]:
        """The file's content, normalized (defaults filled in, absent options left out): equal
        workflows give equal documents, whichever way they were written."""
        return {
            "key": self.key,
            "name": self.name,
            "description": self.description,
            "triggers": in_order(
                [normal_trigger(t.model_dump(mode="json")) for t in self.triggers]
            ),
            "definition": self.definition.stored(),
        }


def normal_trigger(entry: dict[str, Any]) -> dict[str, Any]:
    """A trigger as files and plans compare it: status lists sorted, nothing else changed."""
    if entry.get("kind") == "event":
        entry["on"]["status"] = sorted(set(entry["on"]["status"]))
    return entry


def in_order(triggers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Triggers in one order (their order means nothing): by kind, then content."""
    return sorted(triggers, key=lambda t: (t["kind"], json.dumps(t, sort_keys=True)))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a workflow file, made from the models above."""
    schema = WorkflowFile.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://taskloom.dev{SCHEMA_PATH}",
        "title": "Taskloom workflow",
        **schema,
    }


def shipped_schema() -> str:
    """The schema as shipped in the package (tests keep it equal to `json_schema()`)."""
    return resources.files("taskloom.workflows").joinpath("schema/workflow.json").read_text()


def schema_text() -> str:
    """The schema as written to the shipped file: sorted keys, two-space indent, final newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Problem:
    path: Path
    field: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.field}: {self.message}"
            if self.field
            else (f"{self.path}: {self.message}")
        )


def parse(text: str, path: Path) -> Any:
    """The file's data: JSON for `.json`, YAML otherwise (JSON is YAML too); ValueError when it
    is neither."""
    if path.suffix == ".json":
        return json.loads(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as bad:
        raise ValueError(str(bad)) from None


def check(data: Any, path: Path) -> tuple[WorkflowFile | None, list[Problem]]:
    """The workflow the data describes, or the problems that stop it (with field paths)."""
    try:
        workflow = WorkflowFile.model_validate(data)
    except ValidationError as invalid:
        return None, [
            Problem(path, ".".join(str(part) for part in _file_loc(error["loc"])), error["msg"])
            for error in invalid.errors()
        ]
    try:
        check_offline(workflow.definition)
    except ValidationFailed as failed:
        errors = (failed.details or {}).get("errors", [])
        return None, [
            Problem(path, ".".join(str(p) for p in error["loc"][1:]), error["message"])
            for error in errors
        ] or [Problem(path, "definition", failed.message)]
    return workflow, []


_KINDS = frozenset(("schedule", "webhook", "event"))


def _file_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The field path as written in the file: pydantic puts the trigger's kind (the union's
    tag) after its index, `triggers.0.webhook.verification`, which no file has."""
    if len(loc) > 2 and loc[0] == "triggers" and loc[2] in _KINDS:
        return loc[:2] + loc[3:]
    return loc


def load(path: Path) -> tuple[WorkflowFile | None, list[Problem]]:
    """Read and check one file."""
    try:
        data = parse(path.read_text(encoding="utf-8"), path)
    except (OSError, ValueError) as unreadable:
        return None, [Problem(path, "", f"cannot be read: {unreadable}")]
    return check(data, path)


def workflow_paths(targets: list[Path]) -> list[Path]:
    """The files named, and the workflow files directly in the directories named."""
    found: list[Path] = []
    for target in targets:
        if target.is_dir():
            found.extend(
                sorted(p for p in target.iterdir() if p.suffix in SUFFIXES and p.is_file())
            )
        else:
            found.append(target)
    return found


def load_all(targets: list[Path]) -> tuple[dict[str, tuple[Path, WorkflowFile]], list[Problem]]:
    """Every workflow file of `targets` by key; a key used by two files is a problem."""
    by_key: dict[str, tuple[Path, WorkflowFile]] = {}
    problems: list[Problem] = []
    for path in workflow_paths(targets):
        if path.name == STATE_FILE:
            continue
        if not path.exists():
            problems.append(Problem(path, "", "no such file or directory"))
            continue
        workflow, found = load(path)
        problems.extend(found)
        if workflow is None:
            continue
        if workflow.key in by_key:
            problems.append(
                Problem(
                    path, "key", f"{workflow.key!r} is also the key of {by_key[workflow.key][0]}"
                )
            )
            continue
        by_key[workflow.key] = (path, workflow)
    return by_key, problems


def dump(document: dict[str, Any], *, schema_url: str) -> str:
    """A workflow document as a YAML file, its first line telling editors the schema."""
    body: str = yaml.dump(
        document,
        Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
    return f"# yaml-language-server: $schema={schema_url}\n{body}"
