"""How an agent step goes on from its rows (ADR 0015), with the rows a dead worker leaves
written directly: a tool call interrupted twice is not made a third time, a model turn that
never finished is asked again under its number; and the tool names both APIs accept."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import text

from taskloom.db.tenancy import system_transaction
from taskloom.executions.agent_tools import model_name
from taskloom.runtime import Runtime
from tests.executions.agent_support import agent_workflow, connect_tools, run_here
from tests.factories import Account
from tests.fakes.ai_apis import FakeAnthropic, Reply
from tests.fakes.mcp_server import RunningMcpServer
from tests.workers import execute


async def _left_behind(
    runtime: Runtime, owner: Account, execution_id: str, *, tool_attempts: int | None
) -> None:
    """What a worker that died in turn 1 leaves: the turn (one call of search_notes) and,
    unless `tool_attempts` is None, the call's row still `running` after that many starts."""
    rows = [
        {
            "call_index": 0,
            "kind": "model",
            "status": "succeeded",
            "attempts": 1,
            "output": '{"text": "", "tool_calls": [{"id": "call_x", "name": '
            '"notes__search_notes", "arguments": {"query": "welcome"}}], "stop_reason": '
            '"tool_use"}',
        }
    ]
    if tool_attempts is not None:
        rows.append(
            {
                "call_index": 1,
                "kind": "tool",
                "status": "running",
                "attempts": tool_attempts,
                "output": None,
            }
        )
    async with system_transaction(runtime.database) as db:
        for row in rows:
            await db.execute(
                text(
                    "insert into execution_agent_turns (id, org_id, execution_id, step_id, turn, "
                    "call_index, kind, status, attempts, tool_call_id, output) values (:id, :org, "
                    ":execution, 'agent', 1, :call_index, :kind, :status, :attempts, "
                    ":tool_call_id, cast(:output as jsonb))"
                ),
                {
                    "id": uuid.uuid4(),
                    "org": owner.org_id,
                    "execution": uuid.UUID(execution_id),
                    "tool_call_id": "call_x" if row["kind"] == "tool" else None,
                    **row,
                },
            )


async def test_a_tool_call_interrupted_twice_becomes_an_error_result_not_a_third_call(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
) -> None:
    await connect_tools(api, owner, fake_anthropic, mcp_server)
    fake_anthropic.script(Reply("The search kept failing."))
    workflow_id = await agent_workflow(
        api, owner, fake_anthropic, tools=[{"connection": "notes", "tools": "read_only"}]
    )
    execution_id = await execute(api, owner, workflow_id, {"ask": "Search"})
    await _left_behind(queue_runtime, owner, execution_id, tool_attempts=2)
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"

    assert mcp_server.calls == []  # no third call
    (request,) = fake_anthropic.requests  # turn 1 was not asked again: only turn 2
    result = request.json["messages"][-1]["content"][0]
    assert result["tool_use_id"] == "call_x"
    assert result["is_error"] is True
    assert result["content"].startswith("tool_interrupted:")
    turns = await api.get(
        f"/api/executions/{execution_id}/steps/agent/turns", headers=owner.headers
    )
    call = turns.json()["turns"][1]
    assert (call["status"], call["attempts"], call["error"]["code"]) == (
        "failed",
        2,
        "tool_interrupted",
    )


async def test_a_call_interrupted_once_is_made_again_with_its_key(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
) -> None:
    await connect_tools(api, owner, fake_anthropic, mcp_server)
    fake_anthropic.script(Reply("Found the welcome note."))
    workflow_id = await agent_workflow(
        api, owner, fake_anthropic, tools=[{"connection": "notes", "tools": "read_only"}]
    )
    execution_id = await execute(api, owner, workflow_id, {"ask": "Search"})
    await _left_behind(queue_runtime, owner, execution_id, tool_attempts=1)
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"

    assert mcp_server.calls == [("search_notes", {"query": "welcome", "limit": 5})]
    keys = {h.get("idempotency-key") for _, h in mcp_server.http_requests}
    assert f"{execution_id}:agent:1:call_x" in keys
    (request,) = fake_anthropic.requests
    assert "Welcome" in request.json["messages"][-1]["content"][0]["content"]


async def test_a_turn_that_never_finished_is_asked_again_under_its_number(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
) -> None:
    await connect_tools(api, owner, fake_anthropic)
    fake_anthropic.script(Reply("Hello again."))
    workflow_id = await agent_workflow(api, owner, fake_anthropic)
    execution_id = await execute(api, owner, workflow_id, {"ask": "Hi"})
    async with system_transaction(queue_runtime.database) as db:
        await db.execute(
            text(
                "insert into execution_agent_turns (id, org_id, execution_id, step_id, turn, "
                "call_index, kind, status) values (:id, :org, :e, 'agent', 1, 0, 'model', "
                "'running')"
            ),
            {"id": uuid.uuid4(), "org": owner.org_id, "e": uuid.UUID(execution_id)},
        )
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"
    turns = await api.get(
        f"/api/executions/{execution_id}/steps/agent/turns", headers=owner.headers
    )
    (turn,) = turns.json()["turns"]
    assert (turn["turn"], turn["status"], turn["attempts"]) == (1, "succeeded", 2)
    assert turn["output"]["text"] == "Hello again."


def test_tool_names_are_valid_for_both_apis_unique_and_stable() -> None:
    taken: set[str] = set()
    plain = model_name("notes", "search_notes", taken)
    assert plain == "notes__search_notes"
    odd = model_name("my notes.v2", "search/notes", taken)
    assert odd == "my_notes_v2__search_notes"
    long = model_name("c" * 100, "t" * 100, taken)
    assert len(long) == 64
    assert long == model_name("c" * 100, "t" * 100, set())  # the same on every run
    taken.update({plain, odd})
    clash = model_name("my notes v2", "search notes", taken)  # the same once sanitised
    assert clash != odd
    assert len(clash) <= 64
    for name in (plain, odd, long, clash):
        assert all(ch.isalnum() or ch in "_-" for ch in name)
