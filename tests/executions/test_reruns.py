"""Re-runs (issue 21, item 3): `POST /api/executions/{id}/retry` with a body makes a new
execution linked to the old one, keeping the recorded outputs of the steps upstream of
`from_step` and running everything else again on a real worker; the local counting server
sees which steps were called again."""

from __future__ import annotations

from typing import Any

import httpx

from tests.factories import Account, add_member, register
from tests.workers import (
    CountingServer,
    StartWorker,
    create_workflow,
    execute,
    unique_key,
    wait_for_status,
)


def _steps(execution: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step_id"]: s for s in execution["steps"]}


async def _rerun(
    api: httpx.AsyncClient, account: Account, execution_id: str, **body: Any
) -> httpx.Response:
    return await api.post(
        f"/api/executions/{execution_id}/retry", json=body, headers=account.headers
    )


async def _rerun_done(
    api: httpx.AsyncClient, account: Account, execution_id: str, **body: Any
) -> dict[str, Any]:
    response = await _rerun(api, account, execution_id, **body)
    assert response.status_code == 202, response.text
    new = response.json()
    assert new["id"] != execution_id
    assert new["retry_of"] == execution_id
    assert new["trigger_kind"] == "retry"
    assert response.headers["location"] == f"/api/executions/{new['id']}"
    return await wait_for_status(api, account, new["id"])


def _chain(counting_server: CountingServer, a: str, b: str) -> list[dict[str, Any]]:
    return [
        {"id": "a", "type": "http", "args": {"url": counting_server.url(a)}},
        {
            "id": "b",
            "type": "http",
            "args": {
                "url": counting_server.url(b),
                "method": "POST",
                "json": {"a_call": "{{ steps.a.output.body.call }}"},
            },
        },
        {
            "id": "c",
            "type": "transform",
            "args": {
                "value": {
                    "a": "{{ steps.a.output.body.call }}",
                    "b": "{{ steps.b.output.body.call }}",
                    "n": "{{ input.n }}",
                }
            },
        },
    ]


async def test_a_rerun_from_the_middle_of_a_chain_keeps_upstream_outputs_and_runs_the_rest(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    a, b = unique_key("chain-a"), unique_key("chain-b")
    workflow_id = await create_workflow(api, owner, _chain(counting_server, a, b))
    start_worker()
    old_id = await execute(api, owner, workflow_id, {"n": 5})
    old = await wait_for_status(api, owner, old_id)
    assert old["status"] == "succeeded", old
    assert old["output"] == {"a": 1, "b": 1, "n": 5}

    new = await _rerun_done(api, owner, old_id, from_step="b")

    assert new["status"] == "succeeded", new
    assert counting_server.calls(a) == 1  # kept: not called again
    assert counting_server.calls(b) == 2
    steps = _steps(new)
    assert steps["a"]["reused"] is True
    assert steps["a"]["attempts"] == 0
    assert steps["a"]["output"] == _steps(old)["a"]["output"]
    assert [steps["b"]["reused"], steps["c"]["reused"]] == [False, False]
    assert steps["b"]["output"]["body"]["body"] == {"a_call": 1}  # read the kept output
    assert new["output"] == {"a": 1, "b": 2, "n": 5}  # the same input, the kept a
    assert new["input"] == {"n": 5}
    assert new["workflow_version"] == old["workflow_version"] == 1

    # The old execution is unchanged, and lists its re-run.
    after = (await api.get(f"/api/executions/{old_id}", headers=owner.headers)).json()
    assert after["status"] == "succeeded"
    assert after["steps"] == old["steps"]
    assert after["reruns"] == [new["id"]]
    assert after["retry_of"] is None
    listed = await api.get(
        "/api/executions", params={"workflow_id": workflow_id}, headers=owner.headers
    )
    assert {e["id"]: e["retry_of"] for e in listed.json()["items"]} == {
        old_id: None,
        new["id"]: old_id,
    }
    audit = await api.get(
        "/api/audit-logs", params={"action": "execution.retry"}, headers=owner.headers
    )
    assert audit.status_code == 200, audit.text
    recorded = [r for r in audit.json()["items"] if r["resource_id"] == old_id]
    assert recorded, audit.json()
    assert recorded[0]["details"]["rerun_execution_id"] == new["id"]
    assert recorded[0]["details"]["reused_steps"] == ["a"]

    # Without from_step every step runs again.
    everything = await _rerun_done(api, owner, old_id)
    assert everything["status"] == "succeeded", everything
    assert [counting_server.calls(a), counting_server.calls(b)] == [2, 3]
    assert not any(s["reused"] for s in everything["steps"])


async def test_a_rerun_in_a_dag_runs_a_sibling_branch_that_is_not_upstream_again(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    root, left, right = unique_key("root"), unique_key("left"), unique_key("right")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {"id": "r", "type": "http", "needs": [], "args": {"url": counting_server.url(root)}},
            {"id": "l", "type": "http", "needs": ["r"], "args": {"url": counting_server.url(left)}},
            {
                "id": "s",
                "type": "http",
                "needs": ["r"],
                "args": {"url": counting_server.url(right)},
            },
            {
                "id": "j",
                "type": "transform",
                "needs": ["l", "s"],
                "args": {
                    "value": "{{ [steps.r.output.body.call, steps.l.output.body.call, "
                    "steps.s.output.body.call] }}"
                },
            },
        ],
    )
    start_worker()
    old_id = await execute(api, owner, workflow_id)
    assert (await wait_for_status(api, owner, old_id))["status"] == "succeeded"

    new = await _rerun_done(api, owner, old_id, from_step="l")

    assert new["status"] == "succeeded", new
    assert [counting_server.calls(k) for k in (root, left, right)] == [1, 2, 2]
    assert {k: s["reused"] for k, s in _steps(new).items()} == {
        "r": True,
        "l": False,
        "s": False,  # a sibling branch, not upstream of l: it runs again
        "j": False,
    }
    assert _steps(new)["j"]["output"] == [1, 2, 2]

    # From the join, both branches and the root are upstream: only the join runs.
    last = await _rerun_done(api, owner, new["id"], from_step="j")
    assert last["status"] == "succeeded", last
    assert [counting_server.calls(k) for k in (root, left, right)] == [1, 2, 2]
    assert {k for k, s in _steps(last).items() if s["reused"]} == {"r", "l", "s"}
    assert last["retry_of"] == new["id"]


async def test_a_rerun_on_the_current_definition_records_its_version_and_refuses_lost_steps(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    a, b = unique_key("cur-a"), unique_key("cur-b")
    chain = _chain(counting_server, a, b)
    workflow_id = await create_workflow(api, owner, chain)
    start_worker()
    old_id = await execute(api, owner, workflow_id, {"n": 1})
    assert (await wait_for_status(api, owner, old_id))["status"] == "succeeded"

    # Version 2: a new step between a and b, and another c; a is still upstream of b.
    inserted = {"id": "x", "type": "transform", "args": {"value": "{{ steps.a.output.status }}"}}
    changed_c = {"id": "c", "type": "transform", "args": {"value": "v2 {{ steps.x.output }}"}}
    put = await api.put(
        f"/api/workflows/{workflow_id}",
        json={"name": "wf", "definition": {"steps": [chain[0], inserted, chain[1], changed_c]}},
        headers=owner.headers,
    )
    assert put.status_code == 200, put.text
    assert put.json()["version"] == 2

    original = await _rerun_done(api, owner, old_id, from_step="c", definition="original")
    assert original["workflow_version"] == 1
    assert original["output"] == {"a": 1, "b": 1, "n": 1}
    assert "x" not in _steps(original)

    current = await _rerun_done(api, owner, old_id, from_step="b", definition="current")
    assert current["status"] == "succeeded", current
    assert current["workflow_version"] == 2
    assert [counting_server.calls(a), counting_server.calls(b)] == [1, 2]
    assert {k: s["reused"] for k, s in _steps(current).items()} == {
        "a": True,
        "x": False,  # new upstream of b: nothing recorded, it runs
        "b": False,
        "c": False,
    }
    assert current["output"] == "v2 200"

    # Version 3: b no longer needs a (a DAG where b is a root): a cannot be kept for b.
    dag = [
        {**chain[0], "needs": []},
        {**chain[1], "needs": [], "args": {"url": counting_server.url(b)}},
        {"id": "c", "type": "transform", "needs": ["b"], "args": {"value": "v3"}},
    ]
    put = await api.put(
        f"/api/workflows/{workflow_id}",
        json={"name": "wf", "definition": {"steps": dag}},
        headers=owner.headers,
    )
    assert put.status_code == 200, put.text
    refused = await _rerun(api, owner, old_id, from_step="b", definition="current")
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "kept_steps_missing"
    assert "a" in error["message"]
    assert error["details"] == {"missing": ["a"]}
    # c's upstream lost a and keeps b: still refused, naming only a.
    refused = await _rerun(api, owner, old_id, from_step="c", definition="current")
    assert refused.status_code == 422
    assert refused.json()["error"]["details"] == {"missing": ["a"]}
    # The original definition still re-runs from b.
    assert (await _rerun(api, owner, old_id, from_step="b")).status_code == 202

    # The current definition's input_schema is checked against the old input.
    put = await api.put(
        f"/api/workflows/{workflow_id}",
        json={
            "name": "wf",
            "definition": {
                "steps": dag,
                "input_schema": {"type": "object", "required": ["m"]},
            },
        },
        headers=owner.headers,
    )
    assert put.status_code == 200, put.text
    refused = await _rerun(api, owner, old_id, definition="current")
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "input_invalid"


async def test_a_rerun_is_refused_clearly(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    slow, failing = unique_key("slow"), unique_key("failing")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "a",
                "type": "http",
                "args": {"url": counting_server.url(failing, fail=1, status=404)},
            },
            {"id": "b", "type": "transform", "args": {"value": "{{ steps.a.output.status }}"}},
        ],
    )
    slow_workflow = await create_workflow(
        api,
        owner,
        [{"id": "a", "type": "http", "args": {"url": counting_server.url(slow, sleep=3)}}],
    )
    start_worker()
    failed_id = await execute(api, owner, workflow_id)
    assert (await wait_for_status(api, owner, failed_id))["status"] == "failed"

    # A kept step that failed has no output to keep.
    refused = await _rerun(api, owner, failed_id, from_step="b")
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "kept_steps_unfinished"
    assert refused.json()["error"]["details"] == {"unfinished": ["a"]}
    unknown = await _rerun(api, owner, failed_id, from_step="nope")
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "unknown_step"
    bad = await _rerun(api, owner, failed_id, definition="latest")
    assert bad.status_code == 422
    extra = await _rerun(api, owner, failed_id, from_step="a", force=True)
    assert extra.status_code == 422

    # A viewer reads but does not re-run; another organization does not see it.
    viewer = await add_member(api, owner, "viewer")
    assert (await _rerun(api, viewer, failed_id, from_step="a")).status_code == 403
    stranger = await register(api, label="stranger")
    hidden = await _rerun(api, stranger, failed_id, from_step="a")
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "not_found"

    # A running execution is not re-run with a body (a plain retry refuses it too).
    running_id = await execute(api, owner, slow_workflow)
    await wait_for_status(api, owner, running_id, {"running"})
    busy = await _rerun(api, owner, running_id, from_step="a")
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["code"] == "execution_not_finished"
    assert (await wait_for_status(api, owner, running_id))["status"] == "succeeded"
    assert counting_server.calls(slow) == 1
    # A disabled workflow is not started by a re-run either.
    disabled = await api.patch(
        f"/api/workflows/{slow_workflow}", json={"enabled": False}, headers=owner.headers
    )
    assert disabled.status_code == 200, disabled.text
    off = await _rerun(api, owner, running_id, from_step="a")
    assert off.status_code == 409
    assert off.json()["error"]["code"] == "workflow_disabled"
    assert counting_server.calls(slow) == 1

    # From the failed step: it runs again (the counting server now answers 200).
    fixed = await _rerun_done(api, owner, failed_id, from_step="a")
    assert fixed["status"] == "succeeded", fixed
    assert _steps(fixed)["b"]["output"] == 200
    assert counting_server.calls(failing) == 2
    # Nothing of the re-runs touched the failed execution: a plain retry still resumes it.
    old = (await api.get(f"/api/executions/{failed_id}", headers=owner.headers)).json()
    assert old["status"] == "failed"
    assert len(old["reruns"]) == 1


async def test_a_kept_for_each_step_keeps_its_items_and_a_skipped_step_stays_skipped(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    key = unique_key("kept-item")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "each",
                "type": "http",
                "for_each": "{{ input.names }}",
                "args": {"url": counting_server.url(key + "-{{ index }}")},
            },
            {"id": "never", "type": "transform", "when": "{{ false }}", "args": {"value": 1}},
            {
                "id": "names",
                "type": "transform",
                "args": {"value": "{{ steps.each.output | map(attribute='body.call') | list }}"},
            },
        ],
    )
    start_worker()
    old_id = await execute(api, owner, workflow_id, {"names": ["ann", "bob", "cy"]})
    assert (await wait_for_status(api, owner, old_id))["status"] == "succeeded"

    new = await _rerun_done(api, owner, old_id, from_step="names")

    assert new["status"] == "succeeded", new
    assert [counting_server.calls(f"{key}-{i}") for i in range(3)] == [1, 1, 1]
    steps = _steps(new)
    assert steps["each"]["reused"] is True
    assert steps["each"]["items"] == {
        "total": 3,
        "succeeded": 3,
        "failed": 0,
        "running": 0,
        "waiting": 0,
    }
    assert [steps["never"]["status"], steps["never"]["reused"]] == ["skipped", True]
    assert new["output"] == [1, 1, 1]
