"""`taskloom workflows pull` and `push`: a directory of workflow files (workflows/files.py) kept
in step with an organization through the API (workflows/remote.py).

- `pull` writes one `<key>.yaml` per workflow and records, in `.taskloom-state.json`, the
  version each one was at (`{"workflows": {key: {"id", "version"}}}`). A workflow without a key
  gets one made from its name (slugified, made unique with `-2`, `-3`, ...); the server learns
  it on the first push.
- `push` matches files to workflows by key (then by the id the state file recorded), plans
  create / update (with a unified diff of the canonical YAML) / delete (`prune`), and applies the
  plan. An update whose workflow moved on since the last pull (its version is not the one in the
  state file) is refused, unless `force`; the `PUT` carries `If-Match` either way, so a change
  made while the push runs is refused by the server (412)."""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from taskloom.workflows.files import (
    SCHEMA_PATH,
    STATE_FILE,
    WorkflowFile,
    dump,
    in_order,
    normal_trigger,
)
from taskloom.workflows.remote import Remote, RemoteError
from taskloom.workflows.schemas import WorkflowDefinition
from taskloom.workflows.versions import canonical_yaml

Say = Callable[[str], None]
_TRIGGER_FIELDS = {
    "schedule": ("cron", "timezone", "input", "enabled", "overlap", "catch_up"),
    "webhook": ("verification", "response", "sync_timeout_seconds", "enabled", "description"),
    "event": ("on", "enabled", "description"),
}


# --- the state file ---------------------------------------------------------------------------


def read_state(directory: Path) -> dict[str, dict[str, Any]]:
    """key -> {"id", "version"} as the last pull or push left it (empty when none)."""
    path = directory / STATE_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise RemoteError(f"{path} is not JSON: pull again to rebuild it") from None
    workflows: dict[str, dict[str, Any]] = data.get("workflows", {})
    return workflows


def write_state(directory: Path, url: str, workflows: dict[str, dict[str, Any]]) -> None:
    state = {"server": url, "workflows": dict(sorted(workflows.items()))}
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


# --- what the server has, as file documents ---------------------------------------------------


def slugify(name: str) -> str:
    """A key made from a name: lower-case ASCII letters, digits and hyphens."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:63].rstrip("-")
    return slug or "workflow"


def _keys(workflows: list[dict[str, Any]], state: dict[str, dict[str, Any]]) -> dict[str, str]:
    """id -> key for every workflow: its own, else the one the state file gave it, else one
    made from its name (never one another workflow has)."""
    by_state = {entry["id"]: key for key, entry in state.items()}
    taken = {w["key"] for w in workflows if w.get("key")}
    keys: dict[str, str] = {}
    for workflow in sorted(workflows, key=lambda w: (w["created_at"], w["id"])):
        if workflow.get("key"):
            keys[workflow["id"]] = workflow["key"]
            continue
        wanted = by_state.get(workflow["id"])
        if wanted is None or wanted in taken:
            base = slugify(workflow["name"])
            wanted, number = base, 2
            while wanted in taken:
                suffix = f"-{number}"
                wanted, number = base[: 63 - len(suffix)] + suffix, number + 1
        taken.add(wanted)
        keys[workflow["id"]] = wanted
    return keys


def _server_triggers(
    remote: Remote, workflow_id: str, keys: dict[str, str]
) -> list[dict[str, Any]]:
    """The workflow's schedules and triggers as file entries, each with its `id` (left out of
    files and comparisons)."""
    entries: list[dict[str, Any]] = []
    for schedule in remote.get(f"/api/workflows/{workflow_id}/schedules"):
        entry = {"kind": "schedule", **{f: schedule[f] for f in _TRIGGER_FIELDS["schedule"]}}
        entries.append({"id": schedule["id"], **entry})
    for trigger in remote.get(f"/api/workflows/{workflow_id}/triggers"):
        kind = trigger["kind"]
        entry = {"kind": kind, **{f: trigger[f] for f in _TRIGGER_FIELDS[kind]}}
        if kind == "event":
            watched = trigger["on"]["workflow"]
            entry["on"] = {
                "workflow": keys.get(watched, watched),
                "status": trigger["on"]["status"],
            }
        entries.append({"id": trigger["id"], **normal_trigger(entry)})
    return entries


@dataclass
class ServerWorkflow:
    id: str
    key: str
    has_key: bool
    version: int
    document: dict[str, Any]
    triggers: list[dict[str, Any]]  # with ids


def _document(workflow: dict[str, Any], key: str, triggers: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        definition = WorkflowDefinition.model_validate(workflow["definition"]).stored()
    except ValidationError:  # saved before a rule it now breaks: shown as stored
        definition = workflow["definition"]
    return {
        "key": key,
        "name": workflow["name"],
        "description": workflow["description"],
        "triggers": in_order([{k: v for k, v in t.items() if k != "id"} for t in triggers]),
        "definition": definition,
    }


def server_workflows(remote: Remote, state: dict[str, dict[str, Any]]) -> list[ServerWorkflow]:
    workflows = remote.get("/api/workflows")
    keys = _keys(workflows, state)
    found = []
    for workflow in workflows:
        key = keys[workflow["id"]]
        triggers = _server_triggers(remote, workflow["id"], keys)
        found.append(
            ServerWorkflow(
                id=workflow["id"],
                key=key,
                has_key=bool(workflow.get("key")),
                version=workflow["version"],
                document=_document(workflow, key, triggers),
                triggers=triggers,
            )
        )
    return found


def _file_document(document: dict[str, Any]) -> dict[str, Any]:
    """What a file holds: optional fields left out when empty."""
    written = dict(document)
    if written["description"] is None:
        del written["description"]
    if not written["triggers"]:
        del written["triggers"]
    return written


# --- pull -------------------------------------------------------------------------------------


def pull(remote: Remote, directory: Path, say: Say) -> int:
    """Write every workflow of the organization to `directory`; the number written."""
    directory.mkdir(parents=True, exist_ok=True)
    state = read_state(directory)
    found = server_workflows(remote, state)
    schema_url = remote.url + SCHEMA_PATH
    for workflow in found:
        path = directory / f"{workflow.key}.yaml"
        path.write_text(dump(_file_document(workflow.document), schema_url=schema_url), "utf-8")
        note = "" if workflow.has_key else " (key made from its name; push sets it)"
        say(f"pulled {workflow.key} (version {workflow.version}) -> {path}{note}")
    write_state(directory, remote.url, {w.key: {"id": w.id, "version": w.version} for w in found})
    return len(found)


# --- push: the plan ---------------------------------------------------------------------------


@dataclass
class Change:
    action: str  # create, update, delete
    key: str
    file: WorkflowFile | None = None
    server: ServerWorkflow | None = None
    diff: str = ""


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    unchanged: dict[str, ServerWorkflow] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    server_ids: dict[str, str] = field(default_factory=dict)  # every server workflow by key


def make_plan(
    files: dict[str, WorkflowFile],
    server: list[ServerWorkflow],
    state: dict[str, dict[str, Any]],
    *,
    prune: bool,
    force: bool,
) -> Plan:
    """What push would do, and the workflows changed on the server since the last pull."""
    plan = Plan(server_ids={w.key: w.id for w in server})
    by_key = {w.key: w for w in server if w.has_key}
    by_id = {w.id: w for w in server}
    matched: set[str] = set()
    for key, workflow in sorted(files.items()):
        known = state.get(key)
        there = by_key.get(key) or (by_id.get(known["id"]) if known else None)
        if there is None:
            plan.changes.append(Change("create", key, file=workflow))
            continue
        matched.add(there.id)
        local = workflow.document()
        if local == there.document and there.has_key:
            plan.unchanged[key] = there
            continue
        if not force and (known is None or known["id"] != there.id):
            plan.conflicts.append(
                f"{key}: the server has this workflow (version {there.version}) but this "
                "directory never pulled it; pull first, or push --force to overwrite it"
            )
        elif not force and known is not None and known["version"] != there.version:
            plan.conflicts.append(
                f"{key}: changed on the server since the last pull (version {known['version']} "
                f"-> {there.version}); pull again, or push --force to overwrite it"
            )
        diff = "".join(
            difflib.unified_diff(
                canonical_yaml(there.document).splitlines(keepends=True),
                canonical_yaml(local).splitlines(keepends=True),
                fromfile=f"server {key} (version {there.version})",
                tofile=f"file {key}",
            )
        )
        plan.changes.append(Change("update", key, file=workflow, server=there, diff=diff))
    if prune:
        for gone in server:
            if gone.id not in matched:
                plan.changes.append(Change("delete", gone.key, server=gone))
    return plan


def show(plan: Plan, say: Say) -> None:
    for change in plan.changes:
        if change.action == "create":
            assert change.file is not None
            say(f"+ create {change.key} ({change.file.name})")
        elif change.action == "delete":
            assert change.server is not None
            say(f"- delete {change.key} (version {change.server.version}, id {change.server.id})")
        else:
            assert change.server is not None
            say(f"~ update {change.key} (version {change.server.version})")
            for line in (change.diff or "  (sets the key on the server)\n").splitlines():
                say(f"    {line}")
    say(
        f"Plan: {sum(c.action == 'create' for c in plan.changes)} to create, "
        f"{sum(c.action == 'update' for c in plan.changes)} to update, "
        f"{sum(c.action == 'delete' for c in plan.changes)} to delete, "
        f"{len(plan.unchanged)} unchanged."
    )


# --- push: applying it ------------------------------------------------------------------------


def apply(
    remote: Remote,
    plan: Plan,
    state: dict[str, dict[str, Any]],
    *,
    message: str | None,
    say: Say,
    show_secret: bool,
) -> dict[str, dict[str, Any]]:
    """Carry the plan out (creates first, so event triggers may name a new workflow); the new
    state. Stops at the first refusal, with the state of what was done recorded by the caller."""
    for key, same in plan.unchanged.items():  # the file is what the server has: in step
        state[key] = {"id": same.id, "version": same.version}
    ids = dict(plan.server_ids)  # key -> id, for event triggers naming a workflow by key
    ids.update({c.key: c.server.id for c in plan.changes if c.server is not None})
    for change in plan.changes:
        if change.action == "create":
            assert change.file is not None
            created = remote.post("/api/workflows", _body(change.file, message))
            ids[change.key] = created["id"]
            state[change.key] = {"id": created["id"], "version": created["version"]}
    for change in plan.changes:
        if change.action == "delete":
            assert change.server is not None
            remote.delete(f"/api/workflows/{change.server.id}")
            state.pop(change.key, None)
            say(f"deleted {change.key}")
            continue
        assert change.file is not None
        workflow_id = ids[change.key]
        existing = change.server.triggers if change.server else []
        _sync_triggers(remote, workflow_id, change.file, existing, ids, say, show_secret)
        if change.action == "create":
            say(f"created {change.key} (version {state[change.key]['version']})")
            continue
        assert change.server is not None
        updated = remote.put_workflow(
            workflow_id, _body(change.file, message), version=change.server.version
        )
        state[change.key] = {"id": workflow_id, "version": updated["version"]}
        say(f"updated {change.key} (version {change.server.version} -> {updated['version']})")
    return state


def _body(workflow: WorkflowFile, message: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": workflow.key,
        "name": workflow.name,
        "description": workflow.description,
        "definition": workflow.definition.stored(),
    }
    if message:
        body["message"] = message
    return body


def _sync_triggers(
    remote: Remote,
    workflow_id: str,
    workflow: WorkflowFile,
    existing: list[dict[str, Any]],
    ids: dict[str, str],
    say: Say,
    show_secret: bool,
) -> None:
    """Make the workflow's schedules and triggers those of the file: equal ones stay, changed
    ones are updated in place (a webhook keeps its URL and secret), the rest created or
    deleted."""
    left = list(existing)
    wanted = [normal_trigger(t.model_dump(mode="json")) for t in workflow.triggers]
    missing = []
    for entry in wanted:
        same = next((t for t in left if {k: v for k, v in t.items() if k != "id"} == entry), None)
        if same is not None:
            left.remove(same)
        else:
            missing.append(entry)
    for entry in missing:
        kind = entry["kind"]
        body = {f: entry[f] for f in _TRIGGER_FIELDS[kind]}
        if kind == "event":
            watched = entry["on"]["workflow"]
            if watched not in ids:
                raise RemoteError(
                    f"{workflow.key}: triggers: no workflow has the key {watched!r}", status=None
                )
            body["on"] = {"workflow": ids[watched], "status": entry["on"]["status"]}
        reuse = next((t for t in left if t["kind"] == kind), None)
        base = "schedules" if kind == "schedule" else "triggers"
        if reuse is not None:
            left.remove(reuse)
            remote.patch(f"/api/{base}/{reuse['id']}", body)
            say(f"  {workflow.key}: updated a {kind} trigger")
            continue
        if kind != "schedule":
            body["kind"] = kind
        created = remote.post(f"/api/workflows/{workflow_id}/{base}", body)
        say(f"  {workflow.key}: created a {kind} trigger")
        if kind == "webhook":
            _issued(created, workflow.key, say, show_secret)
    for stale in left:
        base = "schedules" if stale["kind"] == "schedule" else "triggers"
        remote.delete(f"/api/{base}/{stale['id']}")
        say(f"  {workflow.key}: deleted a {stale['kind']} trigger")


def _issued(created: dict[str, Any], key: str, say: Say, show_secret: bool) -> None:
    """A new webhook trigger's URL, and its secret on a terminal only (never into a log or a
    CI transcript); elsewhere, how to get one."""
    say(f"  {key}: webhook URL {created['url']}")
    if show_secret:
        say(f"  {key}: webhook secret (shown once, store it now): {created['secret']}")
    else:
        say(
            f"  {key}: a webhook secret was issued and is not printed here (output is not a "
            f"terminal); rotate it to get one: POST /api/triggers/{created['id']}/rotate-secret"
        )
