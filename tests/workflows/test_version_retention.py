"""Workflow version retention (WORKFLOW_VERSIONS_KEPT): the newest N versions of each workflow
stay, older ones go, by the workers' housekeeping (leader upkeep, at most once a minute) and by
`taskloom purge`; a pruned version answers 404 `version_not_found`, a kept one still restores;
workflows with fewer versions, other organizations' included, lose nothing, and executions keep
what they ran. The purge is global, so counts of other tests' rows are bounded from below."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from taskloom.config import Settings
from taskloom.db.tenancy import system_transaction
from taskloom.jobs import UPKEEPS
from taskloom.queue.upkeep import Upkeeps
from taskloom.runtime import Runtime
from taskloom.workflows import retention
from taskloom.workflows.retention import purge_old_versions
from tests.cli_support import deployment_env, run_taskloom
from tests.factories import Account, register

KEPT = 3


@pytest.fixture
def keeping_three(runtime: Runtime) -> Runtime:
    """The session's runtime (same database and Redis) with WORKFLOW_VERSIONS_KEPT=3."""
    settings = runtime.settings.model_copy(update={"workflow_versions_kept": KEPT})
    return dataclasses.replace(runtime, settings=settings)


def _body(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "definition": {"steps": [{"id": "a", "type": "transform", "args": {"value": 1}}]},
    }


async def _saved(client: httpx.AsyncClient, account: Account, times: int) -> str:
    """A workflow created, then PUT until it has `times` versions; its id."""
    created = await client.post("/api/workflows", json=_body("v1"), headers=account.headers)
    assert created.status_code == 201, created.text
    workflow_id = str(created.json()["id"])
    for n in range(2, times + 1):
        await _put(client, account, workflow_id, n)
    return workflow_id


async def _put(client: httpx.AsyncClient, account: Account, workflow_id: str, n: int) -> None:
    put = await client.put(
        f"/api/workflows/{workflow_id}", json=_body(f"v{n}"), headers=account.headers
    )
    assert put.status_code == 200, put.text
    assert put.json()["version"] == n


async def _numbers(runtime: Runtime, workflow_id: str) -> list[int]:
    """The version numbers stored for the workflow, read on the privileged role."""
    async with system_transaction(runtime.database) as db:
        rows = await db.execute(
            text("select number from workflow_versions where workflow_id = :w order by number"),
            {"w": uuid.UUID(workflow_id)},
        )
        return list(rows.scalars())


async def _listed(client: httpx.AsyncClient, account: Account, workflow_id: str) -> list[int]:
    listed = await client.get(f"/api/workflows/{workflow_id}/versions", headers=account.headers)
    assert listed.status_code == 200, listed.text
    return [v["number"] for v in listed.json()["items"]]


async def test_the_purge_keeps_each_workflows_newest_versions_and_nothing_else_goes(
    client: httpx.AsyncClient, runtime: Runtime, keeping_three: Runtime
) -> None:
    owner = await register(client, label="versret", organization_name="Kept Org")
    other = await register(client, label="versret-other", organization_name="Other Org")
    busy = await _saved(client, owner, 1)
    ran = await client.post(
        f"/api/workflows/{busy}/execute", json={"input": {}}, headers=owner.headers
    )
    assert ran.status_code == 202, ran.text
    for n in range(2, 7):
        await _put(client, owner, busy, n)
    few = await _saved(client, owner, 2)
    elsewhere = await _saved(client, other, KEPT)

    counted = await purge_old_versions(keeping_three, dry_run=True)
    assert counted >= 3  # ours (1-3 of `busy`), and any other test's
    assert await _numbers(runtime, busy) == [1, 2, 3, 4, 5, 6]  # a dry run deletes nothing

    assert await purge_old_versions(keeping_three) == counted
    assert await _numbers(runtime, busy) == [4, 5, 6]
    assert await _numbers(runtime, few) == [1, 2]
    assert await _numbers(runtime, elsewhere) == [1, 2, 3]
    assert await purge_old_versions(keeping_three) == 0  # idempotent
    assert await purge_old_versions(keeping_three, dry_run=True) == 0

    # The history shows what is kept; a pruned number is not found, however asked for.
    assert await _listed(client, owner, busy) == [6, 5, 4]
    base = f"/api/workflows/{busy}/versions"
    for method, path, params in (
        ("GET", f"{base}/1", {}),
        ("GET", f"{base}/3", {}),
        ("GET", f"{base}/5/diff", {"against": 2}),
        ("GET", f"{base}/4/diff", {}),  # the one before it was pruned
        ("POST", f"{base}/2/restore", {}),
    ):
        answer = await client.request(method, path, params=params, headers=owner.headers)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "version_not_found"
    diff = await client.get(f"{base}/6/diff", params={"against": 4}, headers=owner.headers)
    assert diff.status_code == 200, diff.text
    assert (diff.json()["from_version"], diff.json()["to_version"]) == (4, 6)

    # A kept version restores as a new one; the next purge keeps the newest three again.
    restored = await client.post(f"{base}/5/restore", headers=owner.headers)
    assert restored.status_code == 201, restored.text
    version = restored.json()["version"]
    assert (version["number"], version["restored_from"], version["name"]) == (7, 5, "v5")
    assert await purge_old_versions(keeping_three) >= 1
    assert await _listed(client, owner, busy) == [7, 6, 5]

    # The execution started at version 1 keeps what it ran.
    execution = await client.get(
        f"/api/executions/{ran.json()['execution_id']}", headers=owner.headers
    )
    assert execution.status_code == 200, execution.text
    assert execution.json()["workflow_version"] == 1


async def test_the_leaders_upkeep_purges_old_versions_at_most_once_a_minute(
    client: httpx.AsyncClient, runtime: Runtime, keeping_three: Runtime
) -> None:
    assert retention.UPKEEP in UPKEEPS
    assert retention.UPKEEP.leader_only
    owner = await register(client, label="versret-upkeep")
    workflow_id = await _saved(client, owner, 5)
    leader = Upkeeps(keeping_three, UPKEEPS, owner="test")
    await leader.tick()  # the leader's upkeep, once
    assert await _numbers(runtime, workflow_id) == [3, 4, 5]

    await _put(client, owner, workflow_id, 6)
    await leader.tick()  # within the minute: the scan waits
    assert await _numbers(runtime, workflow_id) == [3, 4, 5, 6]
    await Upkeeps(keeping_three, UPKEEPS, owner="test").tick()  # a new process's first tick
    assert await _numbers(runtime, workflow_id) == [4, 5, 6]


async def test_taskloom_purge_reports_and_deletes_old_versions_too(
    settings: Settings, runtime: Runtime, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    owner = await register(client, label="versret-cli")
    workflow_id = await _saved(client, owner, 5)
    env = deployment_env(settings, WORKFLOW_VERSIONS_KEPT=str(KEPT))

    preview = await run_taskloom("purge", "--dry-run", env=env, cwd=tmp_path)
    assert preview.returncode == 0, preview.stderr
    assert "executions finished before" in preview.stdout  # the executions' lines are still there
    line = preview.stdout.splitlines()[-1]
    assert line.startswith("workflow versions beyond the newest 3 of each workflow: would delete")
    assert int(line.split()[-1]) >= 2
    assert await _numbers(runtime, workflow_id) == [1, 2, 3, 4, 5]

    purged = await run_taskloom("purge", env=env, cwd=tmp_path)
    assert purged.returncode == 0, purged.stderr
    assert "of each workflow: deleted" in purged.stdout.splitlines()[-1]
    assert await _numbers(runtime, workflow_id) == [3, 4, 5]


@pytest.mark.parametrize("kept", [0, -1, 10_001])
def test_there_is_no_unbounded_history(kept: int) -> None:
    with pytest.raises(ValidationError, match="workflow_versions_kept"):
        Settings(_env_file=None, workflow_versions_kept=kept)  # type: ignore[call-arg]
