"""Workflows as code (docs/WORKFLOWS-AS-CODE.md): `taskloom workflows validate|pull|push|run`
in subprocesses against a real `taskloom api` and a real `taskloom worker`, one pair for the
module. Each test works in an organization of its own, so `--prune` sees only its workflows."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]

from taskloom.config import Settings
from taskloom.workflows import files, templates
from tests.cli_support import clean_env, run_taskloom, serve_api
from tests.factories import PASSWORD, unique_email
from tests.servers import free_port
from tests.workers import WorkerProcess, worker_env

GOOD = {
    "key": "greet",
    "name": "Greet",
    "description": "Says hello",
    "definition": {
        "steps": [{"id": "hello", "type": "transform", "args": {"value": "hi {{ input.who }}"}}],
        "output": "{{ steps.hello.output }}",
    },
}
FAILING = {
    "key": "broken",
    "name": "Broken",
    "definition": {
        "steps": [
            {
                "id": "call",
                "type": "http",
                "args": {"url": "http://127.0.0.1:1/nothing-listens-here"},
                "retry": {"max_attempts": 1},
            }
        ]
    },
}


@dataclass(frozen=True)
class Server:
    url: str
    env: dict[str, str]  # the API's; also the worker's


@dataclass(frozen=True)
class Org:
    """An organization of its own, with an admin API key for the CLI."""

    url: str
    key: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def cli_env(self, **extra: str) -> dict[str, str]:
        return clean_env(TASKLOOM_URL=self.url, TASKLOOM_API_KEY=self.key, **extra)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30)


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `taskloom api` and one `taskloom worker` on a Redis key prefix of their own."""
    directory = tmp_path_factory.mktemp("as-code")
    env = worker_env(
        settings,
        redis_key_prefix=f"ascode-{secrets.token_hex(3)}:",
        password_hash_time_cost=1,
        password_hash_memory_kib=1024,
        password_hash_parallelism=1,
        rate_limit_reads=1_000_000,
        rate_limit_writes=1_000_000,
        rate_limit_execute=1_000_000,
        rate_limit_auth_per_ip=1_000_000,
    )
    port = free_port()
    api = serve_api(env, port, directory / "api.log")
    worker = WorkerProcess(env, directory / "worker.log")
    try:
        worker.wait_until_started()
        yield Server(url=f"http://127.0.0.1:{port}", env=env)
    finally:
        worker.stop()
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            api.kill()
        print(f"--- api log ---\n{(directory / 'api.log').read_text()}")
        print(f"--- worker log ---\n{worker.output()}")


@pytest.fixture
def org(server: Server) -> Org:
    return _new_org(server)


def _new_org(server: Server) -> Org:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        registered = client.post(
            "/auth/register",
            json={
                "email": unique_email("ascode"),
                "password": PASSWORD,
                "display_name": "As Code",
                "organization_name": "As Code Org",
            },
        )
        assert registered.status_code == 201, registered.text
        token = registered.json()["access_token"]
        made = client.post(
            "/auth/api-keys",
            json={"name": "cli", "role": "admin"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert made.status_code == 201, made.text
    return Org(url=server.url, key=made.json()["key"], token=token)


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(
        json.dumps(document) if path.suffix == ".json" else yaml.safe_dump(document), "utf-8"
    )
    return path


async def _cli(org: Org, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await run_taskloom("workflows", *args, env=org.cli_env(), cwd=cwd)


def _state(directory: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((directory / ".taskloom-state.json").read_text())
    return state["workflows"]


def _by_key(org: Org) -> dict[str, dict[str, Any]]:
    with org.api() as api:
        return {w["key"] or w["name"]: w for w in api.get("/api/workflows").json()}


# --- validate ---------------------------------------------------------------------------------


async def test_validate_accepts_good_yaml_and_json_and_exits_1_with_field_paths(
    tmp_path: Path,
) -> None:
    good = _write(tmp_path / "greet.yaml", GOOD)
    _write(tmp_path / "broken.json", FAILING)
    ok = await run_taskloom("workflows", "validate", str(tmp_path), env=clean_env(), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "2 workflow file(s) valid" in ok.stdout

    bad = tmp_path / "bad"
    bad.mkdir()
    _write(bad / "shape.yaml", {**GOOD, "key": "Not A Slug", "name": ""})
    twice = {"id": "a", "type": "transform", "args": {"value": 1}}
    _write(bad / "twice.yaml", {**GOOD, "key": "twice", "definition": {"steps": [twice, twice]}})
    _write(
        bad / "unknown-arg.yaml",
        {
            **GOOD,
            "key": "unknown-arg",
            "definition": {"steps": [{"id": "a", "type": "transform", "args": {"nope": 1}}]},
        },
    )
    _write(
        bad / "trigger.yaml",
        {**GOOD, "key": "trigger", "triggers": [{"kind": "webhook", "verification": "md5"}]},
    )
    _write(bad / "a-dup.yaml", {**GOOD, "key": "dup"})
    _write(bad / "b-dup.json", {**GOOD, "key": "dup"})
    (bad / "broken.yaml").write_text("key: [unclosed\n", "utf-8")
    result = await run_taskloom(
        "workflows", "validate", str(bad), str(good), env=clean_env(), cwd=tmp_path
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{bad / 'shape.yaml'}:key: String should match") for line in lines)
    assert any(line.startswith(f"{bad / 'shape.yaml'}:name: ") for line in lines)
    assert f"{bad / 'twice.yaml'}:definition.steps.1.id: step id 'a' is used twice" in lines
    assert any(
        line.startswith(f"{bad / 'unknown-arg.yaml'}:definition.steps.0.args") for line in lines
    )
    assert any(line.startswith(f"{bad / 'broken.yaml'}: cannot be read") for line in lines)
    assert f"{bad / 'b-dup.json'}:key: 'dup' is also the key of {bad / 'a-dup.yaml'}" in lines
    assert any(
        line.startswith(f"{bad / 'trigger.yaml'}:triggers.0.verification: ") for line in lines
    )
    assert str(good) not in result.stderr


# --- the schema -------------------------------------------------------------------------------


def test_the_shipped_schema_is_the_one_the_models_make() -> None:
    assert files.shipped_schema() == files.schema_text()


def test_the_schema_is_served_publicly_as_shipped_and_checks_files(org: Org) -> None:
    served = httpx.get(f"{org.url}/api/schema/workflow.json")  # no credentials
    assert served.status_code == 200
    assert served.text == files.shipped_schema()
    assert "max-age" in served.headers["cache-control"]
    schema = served.json()
    assert schema["properties"]["key"]["pattern"] == "^[a-z0-9][a-z0-9-]{0,62}$"
    assert set(schema["required"]) == {"key", "name", "definition"}


# --- pull and push ----------------------------------------------------------------------------


async def test_pull_then_push_is_an_empty_plan_and_an_edit_is_pushed_with_if_match(
    org: Org, tmp_path: Path
) -> None:
    with org.api() as api:
        keyless = api.post(
            "/api/workflows", json={k: v for k, v in GOOD.items() if k != "key"}
        ).json()
        scheduled = api.post("/api/workflows", json={**FAILING, "key": "nightly"}).json()
        schedule = api.post(
            f"/api/workflows/{scheduled['id']}/schedules",
            json={"cron": "0 3 * * *", "timezone": "Europe/Berlin", "input": {"n": 1}},
        )
        assert schedule.status_code == 201, schedule.text
        event = api.post(
            f"/api/workflows/{scheduled['id']}/triggers",
            json={"kind": "event", "on": {"workflow": keyless["id"], "status": ["failed"]}},
        )
        assert event.status_code == 201, event.text

    pulled = await _cli(org, tmp_path, "pull", "wf")
    assert pulled.returncode == 0, pulled.stderr
    directory = tmp_path / "wf"
    greet_file = directory / "greet.yaml"
    text = greet_file.read_text()
    assert text.startswith(f"# yaml-language-server: $schema={org.url}/api/schema/workflow.json\n")
    nightly = yaml.safe_load((directory / "nightly.yaml").read_text())
    assert nightly["triggers"] == [  # by kind: their order means nothing
        {
            "kind": "event",
            "on": {"workflow": "greet", "status": ["failed"]},
            "enabled": True,
            "description": None,
        },
        {
            "kind": "schedule",
            "cron": "0 3 * * *",
            "timezone": "Europe/Berlin",
            "input": {"n": 1},
            "enabled": True,
            "overlap": "skip",
            "catch_up": "none",
        },
    ]
    assert _state(directory) == {
        "greet": {"id": keyless["id"], "version": 1},
        "nightly": {"id": scheduled["id"], "version": 1},
    }
    assert "key made from its name" in pulled.stdout

    # The key made from the name reaches the server on the first push (a new version).
    first = await _cli(org, tmp_path, "push", "wf")
    assert first.returncode == 0, first.stderr
    assert "~ update greet (version 1)" in first.stdout
    assert "sets the key on the server" in first.stdout
    assert _by_key(org)["greet"]["id"] == keyless["id"]
    assert _state(directory)["greet"] == {"id": keyless["id"], "version": 2}

    again = await _cli(org, tmp_path, "push", "wf")
    assert again.returncode == 0, again.stderr
    assert "Plan: 0 to create, 0 to update, 0 to delete, 2 unchanged." in again.stdout

    # An edit: the plan shows the diff, the dry run changes nothing, the push applies it.
    edited = yaml.safe_load(text)
    edited["definition"]["steps"][0]["args"]["value"] = "hello {{ input.who }}"
    edited["description"] = "Says hello, politely"
    greet_file.write_text(yaml.safe_dump(edited), "utf-8")
    dry = await _cli(org, tmp_path, "push", "wf", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "~ update greet (version 2)" in dry.stdout
    assert "-description: Says hello" in dry.stdout
    assert "+description: Says hello, politely" in dry.stdout
    assert _by_key(org)["greet"]["version"] == 2
    assert _state(directory)["greet"]["version"] == 2

    pushed = await _cli(org, tmp_path, "push", "wf", "--message", "politer")
    assert pushed.returncode == 0, pushed.stderr
    assert "updated greet (version 2 -> 3)" in pushed.stdout
    now = _by_key(org)["greet"]
    assert now["version"] == 3
    assert now["description"] == "Says hello, politely"
    assert now["definition"]["steps"][0]["args"]["value"] == "hello {{ input.who }}"
    assert _state(directory)["greet"] == {"id": keyless["id"], "version": 3}
    with org.api() as api:
        versions = api.get(f"/api/workflows/{keyless['id']}/versions").json()["items"]
    assert versions[0]["number"] == 3
    assert versions[0]["message"] == "politer"


async def test_push_refuses_a_workflow_changed_on_the_server_since_the_pull_unless_forced(
    org: Org, tmp_path: Path
) -> None:
    with org.api() as api:
        created = api.post("/api/workflows", json=GOOD).json()
    assert (await _cli(org, tmp_path, "pull", ".")).returncode == 0
    with org.api() as api:
        changed = api.put(
            f"/api/workflows/{created['id']}",
            json={**GOOD, "name": "Greet (edited in the UI)"},
            headers={"If-Match": '"1"'},
        )
        assert changed.status_code == 200, changed.text
    path = tmp_path / "greet.yaml"
    path.write_text(path.read_text().replace("Says hello", "Says hello from git"), "utf-8")

    refused = await _cli(org, tmp_path, "push", ".")
    assert refused.returncode == 1
    assert "greet: changed on the server since the last pull (version 1 -> 2)" in refused.stderr
    server = _by_key(org)["greet"]
    assert (server["version"], server["name"]) == (2, "Greet (edited in the UI)")
    assert _state(tmp_path)["greet"]["version"] == 1

    forced = await _cli(org, tmp_path, "push", ".", "--force")
    assert forced.returncode == 0, forced.stderr
    server = _by_key(org)["greet"]
    assert (server["version"], server["name"]) == (3, "Greet")
    assert server["description"] == "Says hello from git"
    assert _state(tmp_path)["greet"]["version"] == 3


async def test_push_creates_from_new_files_with_triggers_and_prune_deletes_the_rest(
    org: Org, tmp_path: Path
) -> None:
    with org.api() as api:
        stray = api.post("/api/workflows", json={**FAILING, "key": "stray"}).json()
    _write(tmp_path / "greet.yaml", GOOD)
    _write(
        tmp_path / "follow.json",
        {
            **FAILING,
            "key": "follow",
            "triggers": [
                {"kind": "webhook", "verification": "taskloom"},
                {"kind": "event", "on": {"workflow": "greet"}},
                {"kind": "schedule", "cron": "@daily"},
            ],
        },
    )
    dry = await _cli(org, tmp_path, "push", ".", "--prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "+ create follow (Broken)" in dry.stdout
    assert "+ create greet (Greet)" in dry.stdout
    assert f"- delete stray (version 1, id {stray['id']})" in dry.stdout
    assert set(_by_key(org)) == {"stray"}

    pushed = await _cli(org, tmp_path, "push", ".", "--prune")
    assert pushed.returncode == 0, pushed.stderr
    workflows = _by_key(org)
    assert set(workflows) == {"greet", "follow"}
    assert "deleted stray" in pushed.stdout
    assert "a webhook secret was issued and is not printed here" in pushed.stdout
    follow = workflows["follow"]
    with org.api() as api:
        triggers = api.get(f"/api/workflows/{follow['id']}/triggers").json()
        schedules = api.get(f"/api/workflows/{follow['id']}/schedules").json()
    assert sorted(t["kind"] for t in triggers) == ["event", "webhook"]
    event = next(t for t in triggers if t["kind"] == "event")
    assert event["on"] == {"workflow": workflows["greet"]["id"], "status": ["succeeded"]}
    assert [s["cron"] for s in schedules] == ["@daily"]
    assert set(_state(tmp_path)) == {"greet", "follow"}

    # Unchanged triggers are left alone: the webhook keeps its id (and so its URL and secret).
    again = await _cli(org, tmp_path, "push", ".")
    assert "Plan: 0 to create, 0 to update, 0 to delete, 2 unchanged." in again.stdout
    document = json.loads((tmp_path / "follow.json").read_text())
    document["triggers"][0]["response"] = "sync"
    _write(tmp_path / "follow.json", document)
    changed = await _cli(org, tmp_path, "push", ".")
    assert changed.returncode == 0, changed.stderr
    assert "+  response: sync" in changed.stdout
    with org.api() as api:
        after = api.get(f"/api/workflows/{follow['id']}/triggers").json()
    webhook = next(t for t in after if t["kind"] == "webhook")
    assert webhook["id"] == next(t for t in triggers if t["kind"] == "webhook")["id"]
    assert webhook["response"] == "sync"


async def test_push_names_missing_settings_and_the_servers_refusals(
    org: Org, tmp_path: Path
) -> None:
    _write(tmp_path / "greet.yaml", GOOD)
    missing = await run_taskloom("workflows", "push", ".", env=clean_env(), cwd=tmp_path)
    assert missing.returncode == 2
    assert "TASKLOOM_URL is not set" in missing.stderr
    no_key = await run_taskloom(
        "workflows", "pull", ".", env=clean_env(TASKLOOM_URL=org.url), cwd=tmp_path
    )
    assert no_key.returncode == 2
    assert "TASKLOOM_API_KEY is not set" in no_key.stderr
    wrong = await run_taskloom(
        "workflows",
        "push",
        ".",
        env=clean_env(TASKLOOM_URL=org.url, TASKLOOM_API_KEY="tlk_not-a-real-key"),
        cwd=tmp_path,
    )
    assert wrong.returncode == 1
    assert "the API key was not accepted" in wrong.stderr
    assert "HTTP 401" in wrong.stderr


# --- run --------------------------------------------------------------------------------------


async def test_run_wait_streams_step_statuses_and_exits_0_only_on_success(
    org: Org, tmp_path: Path
) -> None:
    _write(tmp_path / "greet.yaml", GOOD)
    _write(tmp_path / "broken.yaml", FAILING)
    assert (await _cli(org, tmp_path, "push", ".")).returncode == 0
    _write(tmp_path / "input.json", {"who": "Ada"})

    ok = await _cli(org, tmp_path, "run", "greet", "--input", "input.json", "--wait")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "step hello: succeeded" in ok.stdout
    assert ok.stdout.rstrip().endswith("succeeded")
    with org.api() as api:
        execution_id = ok.stdout.split()[1]
        done = api.get(f"/api/executions/{execution_id}").json()
    assert (done["status"], done["output"]) == ("succeeded", "hi Ada")

    failed = await _cli(org, tmp_path, "run", "Broken", "--wait")  # by its name
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "step call: failed" in failed.stdout
    assert ": failed" in failed.stdout.splitlines()[-1]

    unknown = await _cli(org, tmp_path, "run", "nothing-like-it", "--wait")
    assert unknown.returncode == 2
    assert "no workflow has the key or name 'nothing-like-it'" in unknown.stderr


# --- the key on the API -----------------------------------------------------------------------


def test_a_key_is_unique_in_its_organization_and_kept_when_a_put_leaves_it_out(
    org: Org, server: Server
) -> None:
    with org.api() as api:
        first = api.post("/api/workflows", json=GOOD)
        assert first.status_code == 201, first.text
        assert first.json()["key"] == "greet"
        taken = api.post("/api/workflows", json={**GOOD, "name": "Another"})
        assert taken.status_code == 409
        assert taken.json()["error"]["code"] == "key_taken"
        bad = api.post("/api/workflows", json={**GOOD, "key": "-Bad"})
        assert bad.status_code == 422
        other = api.post("/api/workflows", json={**GOOD, "key": "other"}).json()
        kept = api.put(
            f"/api/workflows/{first.json()['id']}",
            json={k: v for k, v in GOOD.items() if k != "key"},
        )
        assert kept.status_code == 200, kept.text
        assert kept.json()["key"] == "greet"
        moved = api.put(f"/api/workflows/{other['id']}", json={**GOOD, "key": "greet"})
        assert moved.status_code == 409
        listed = {w["id"]: w["key"] for w in api.get("/api/workflows").json()}
        keyless = [api.post("/api/workflows", json={**GOOD, "key": None}) for _ in range(2)]
    assert listed == {first.json()["id"]: "greet", other["id"]: "other"}
    assert [made.status_code for made in keyless] == [201, 201]  # any number without a key
    with _new_org(server).api() as elsewhere:  # another organization may use the same key
        assert elsewhere.post("/api/workflows", json=GOOD).status_code == 201


# --- templates through push ------------------------------------------------------------------


async def test_every_template_initialised_then_pushed_is_accepted_with_its_triggers(
    org: Org, tmp_path: Path
) -> None:
    for name in templates.available():
        made = await _cli(org, tmp_path, "init", "--template", name, "flows")
        assert made.returncode == 0, made.stderr
    pushed = await _cli(org, tmp_path, "push", "flows", "--message", "from the templates")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "Plan: 5 to create, 0 to update, 0 to delete, 0 unchanged." in pushed.stdout
    workflows = _by_key(org)
    assert set(workflows) == set(templates.available())
    with org.api() as api:
        kinds = {
            key: sorted(
                [t["kind"] for t in api.get(f"/api/workflows/{w['id']}/triggers").json()]
                + ["schedule" for _ in api.get(f"/api/workflows/{w['id']}/schedules").json()]
            )
            for key, w in workflows.items()
        }
    assert kinds == {
        "github-issue-triage": ["webhook"],
        "linear-to-github": ["schedule"],
        "notion-daily-digest": ["schedule"],
        "two-step-approval": [],
        "webhook-ai-router": ["webhook"],
    }
    # Without a state file (a fresh clone that never pulled), files equal to the server are
    # unchanged, and the push records their versions so a later edit may be pushed.
    state = _state(tmp_path / "flows")
    (tmp_path / "flows" / ".taskloom-state.json").unlink()
    again = await _cli(org, tmp_path, "push", "flows")
    assert "Plan: 0 to create, 0 to update, 0 to delete, 5 unchanged." in again.stdout
    assert _state(tmp_path / "flows") == state
