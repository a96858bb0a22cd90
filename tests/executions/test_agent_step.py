"""The `agent` step's rules, each run in this process (as the runner does) against the fake
model APIs, the real notes MCP server and GitHub's fake: write tools, the bounds, the metrics
(exact), the stored conversation (redacted, another organization's 404), the live events and
the checks at save time."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from taskloom.db.tenancy import system_transaction
from taskloom.executions.live import stream_key
from taskloom.runtime import Runtime
from tests.executions.agent_support import (
    agent_workflow,
    connect_tools,
    run_here,
    tool_names,
)
from tests.factories import Account, register
from tests.fakes.ai_apis import FakeAnthropic, FakeOpenAI, Reply
from tests.fakes.mcp_server import RunningMcpServer
from tests.fakes.tool_apis import FakeGitHub
from tests.workers import create_workflow, execute

SEARCH = ("notes__search_notes", {"query": "welcome"})


async def _execution(api: httpx.AsyncClient, owner: Account, execution_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/executions/{execution_id}", headers=owner.headers)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def _turns(api: httpx.AsyncClient, owner: Account, execution_id: str) -> list[dict[str, Any]]:
    response = await api.get(
        f"/api/executions/{execution_id}/steps/agent/turns", headers=owner.headers
    )
    assert response.status_code == 200, response.text
    turns: list[dict[str, Any]] = response.json()["turns"]
    return turns


async def test_a_write_tool_is_not_offered_without_allow_writes_and_refused_when_called(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_openai: FakeOpenAI,
    mcp_server: RunningMcpServer,
) -> None:
    await connect_tools(api, owner, fake_openai, mcp_server)
    fake_openai.script(
        Reply("", tool_calls=[("call_w", "notes__add_note", {"title": "sneaky"})]),
        Reply("I may not write notes."),
    )
    workflow_id = await agent_workflow(
        api,
        owner,
        fake_openai,
        tools=[
            {"connection": "notes", "tools": "all"},
            {"connection": "notes", "tool": "add_note"},  # listed, but a write
        ],
    )
    execution_id = await execute(api, owner, workflow_id, {"ask": "Add a note"})
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"

    offered = tool_names(fake_openai.requests[0].json)
    assert offered == ["notes__search_notes"]  # the read-only one only
    assert all(name != "add_note" for name, _ in mcp_server.calls)  # never executed
    refusal = fake_openai.requests[1].json["messages"][-1]
    assert refusal["role"] == "tool"
    assert refusal["tool_call_id"] == "call_w"
    assert refusal["content"].startswith("tool_not_allowed: notes__add_note writes")
    rows = await _turns(api, owner, execution_id)
    assert rows[1]["kind"] == "tool"
    assert rows[1]["status"] == "failed"
    assert rows[1]["error"]["code"] == "tool_not_allowed"
    output = (await _execution(api, owner, execution_id))["steps"][0]["output"]
    assert output["text"] == "I may not write notes."
    assert output["tool_calls"] == 1


async def test_the_iteration_limit_stops_the_loop_before_calls_it_could_not_read(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
) -> None:
    await connect_tools(api, owner, fake_anthropic, mcp_server)
    fake_anthropic.reply(lambda _request: Reply("again", tool_calls=[SEARCH]))
    workflow_id = await agent_workflow(
        api,
        owner,
        fake_anthropic,
        tools=[{"connection": "notes", "tool": "search_notes"}],
        max_iterations=2,
    )
    execution_id = await execute(api, owner, workflow_id, {"ask": "Loop forever"})
    assert await run_here(queue_runtime, owner, execution_id) == "failed"

    done = await _execution(api, owner, execution_id)
    assert done["error"]["code"] == "agent_iteration_limit"
    assert "max_iterations 2" in done["error"]["message"]
    assert done["error"]["details"]["turns"] == 2
    assert done["error"]["details"]["tool_calls"] == 1
    assert len(fake_anthropic.requests) == 2
    assert len(mcp_server.calls) == 1  # the second turn's call was not made


async def test_each_rows_end_is_committed_before_the_next_call_is_made(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
) -> None:
    """A row's end rides in the transaction that starts the next row: by the time the model is
    asked again, the last turn and each of its tool calls are committed as finished."""
    await connect_tools(api, owner, fake_anthropic, mcp_server)
    url = queue_runtime.settings.database_url
    assert url is not None

    async def rows() -> list[tuple[int, int, str]]:
        connection = await asyncpg.connect(url)  # the privileged role: no tenant needed
        try:
            found = await connection.fetch(
                "select turn, call_index, status from execution_agent_turns "
                "where org_id = $1 order by turn, call_index",
                owner.org_id,
            )
        finally:
            await connection.close()
        return [(r["turn"], r["call_index"], r["status"]) for r in found]

    seen: list[list[tuple[int, int, str]]] = []

    def answer(_request: Any) -> Reply:
        seen.append(asyncio.run(rows()))  # the fake's own thread: what others see committed
        if len(seen) == 1:
            return Reply("Two searches.", tool_calls=[SEARCH, SEARCH])
        if len(seen) == 2:
            return Reply("One more.", tool_calls=[SEARCH])
        return Reply("Done.")

    fake_anthropic.reply(answer)
    workflow_id = await agent_workflow(
        api, owner, fake_anthropic, tools=[{"connection": "notes", "tool": "search_notes"}]
    )
    execution_id = await execute(api, owner, workflow_id, {"ask": "Search"})
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"

    ok = "succeeded"
    assert seen == [
        [(1, 0, "running")],
        [(1, 0, ok), (1, 1, ok), (1, 2, ok), (2, 0, "running")],
        [(1, 0, ok), (1, 1, ok), (1, 2, ok), (2, 0, ok), (2, 1, ok), (3, 0, "running")],
    ]
    assert [
        (t["turn"], t.get("call_index") or 0, t["status"])
        for t in await _turns(api, owner, execution_id)
    ] == [(1, 0, ok), (1, 1, ok), (1, 2, ok), (2, 0, ok), (2, 1, ok), (3, 0, ok)]


async def test_each_for_each_item_keeps_rows_of_its_own(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
) -> None:
    await connect_tools(api, owner, fake_anthropic, mcp_server)

    def answer(request: Any) -> Reply:
        if not any(m["role"] == "assistant" for m in request.json["messages"]):
            return Reply("Searching.", tool_calls=[SEARCH])
        return Reply("Found it.")

    fake_anthropic.reply(answer)
    step = {
        "id": "agent",
        "type": "agent",
        "for_each": "{{ [0, 1] }}",
        "args": {
            "model": "claude-haiku-4-5",
            "prompt": "Item {{ item }}",
            "tools": [{"connection": "notes", "tool": "search_notes"}],
        },
    }
    workflow_id = await create_workflow(api, owner, [step])
    execution_id = await execute(api, owner, workflow_id, {})
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"

    rows = [
        (t["item_index"], t["turn"], t.get("call_index") or 0, t["status"])
        for t in await _turns(api, owner, execution_id)
    ]
    ok = "succeeded"
    assert rows == [
        (0, 1, 0, ok), (0, 1, 1, ok), (0, 2, 0, ok), (1, 1, 0, ok), (1, 1, 1, ok), (1, 2, 0, ok)
    ]  # fmt: skip


async def test_the_steps_budget_cuts_the_loop_off_before_the_turn_that_would_not_fit(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
) -> None:
    """Haiku 4.5 ($1 / $5 per million): the first turn costs $0.04505 of the step's $0.05; the
    second turn's worst case (1,024 output tokens alone are $0.00512) no longer fits."""
    await connect_tools(api, owner, fake_anthropic, mcp_server)
    fake_anthropic.script(
        Reply("", tool_calls=[SEARCH], input_tokens=45_000, output_tokens=10),
        Reply("never sent"),
    )
    workflow_id = await agent_workflow(
        api,
        owner,
        fake_anthropic,
        tools=[{"connection": "notes", "tools": "read_only"}],
        max_cost_usd="0.05",
    )
    execution_id = await execute(api, owner, workflow_id, {"ask": "Spend"})
    assert await run_here(queue_runtime, owner, execution_id) == "failed"

    done = await _execution(api, owner, execution_id)
    assert done["error"]["code"] == "agent_budget_exhausted"
    assert "max_cost_usd of $0.05 is used up" in done["error"]["message"]
    details = done["error"]["details"]
    assert details["limit"] == "step"
    assert (details["turns"], details["tool_calls"], details["cost_usd"]) == (1, 1, "0.045050")
    assert len(fake_anthropic.requests) == 1
    assert len(mcp_server.calls) == 1
    rows = await _turns(api, owner, execution_id)
    assert [(r["turn"], r["kind"], r["status"]) for r in rows] == [
        (1, "model", "succeeded"),
        (1, "tool", "succeeded"),
        (2, "model", "failed"),
    ]
    assert rows[2]["error"]["code"] == "agent_budget_exhausted"


async def test_the_organizations_budget_stops_the_loop_too(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
) -> None:
    await connect_tools(api, owner, fake_anthropic, mcp_server)
    budget = await api.put(
        "/api/ai/budget", json={"monthly_budget_usd": "0.05"}, headers=owner.headers
    )
    assert budget.status_code == 200, budget.text
    fake_anthropic.script(Reply("", tool_calls=[SEARCH], input_tokens=45_000, output_tokens=10))
    workflow_id = await agent_workflow(
        api, owner, fake_anthropic, tools=[{"connection": "notes", "tools": "read_only"}]
    )
    execution_id = await execute(api, owner, workflow_id, {"ask": "Spend"})
    assert await run_here(queue_runtime, owner, execution_id) == "failed"
    done = await _execution(api, owner, execution_id)
    assert done["error"]["code"] == "budget_exhausted"
    assert done["error"]["details"]["limit"] == "organization"
    assert len(fake_anthropic.requests) == 1


def _samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


async def test_metrics_count_each_turn_and_tool_call_once_also_when_a_retry_resumes(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
    fake_github: FakeGitHub,
) -> None:
    """The second turn is refused once (400) and the step's retry policy runs it again: the
    retry resumes from the rows, so the first turn and both tool calls are neither made nor
    counted again."""
    await connect_tools(api, owner, fake_anthropic, mcp_server, fake_github)
    fake_anthropic.script(
        Reply(
            "",
            tool_calls=[SEARCH, ("gh__getIssues", {"state": "open"})],
            input_tokens=100,
            output_tokens=10,
        ),
        400,
        Reply("All read.", input_tokens=200, output_tokens=20),
    )
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "agent",
                "type": "agent",
                "args": {
                    "model": "claude-haiku-4-5",
                    "prompt": "Read",
                    "tools": [
                        {"connection": "notes", "tools": "read_only"},
                        {"connection": "gh", "tools": "read_only"},
                    ],
                },
                "retry": {"max_attempts": 2, "on": ["ai_bad_request"], "delay": "1ms"},
            }
        ],
    )
    before = _samples((await api.get("/metrics")).text)
    execution_id = await execute(api, owner, workflow_id)
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"
    after = _samples((await api.get("/metrics")).text)

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    model = {"model": "claude-haiku-4-5"}
    assert moved("ai_requests_total", **model, category="none", success="true") == 2
    assert moved("ai_requests_total", **model, category="none", success="false") == 1
    assert moved("ai_tokens_total", **model, type="input") == 300
    assert moved("ai_tokens_total", **model, type="output") == 30
    assert moved("mcp_tool_calls_total", provider="mcp", tool="search_notes", success="true") == 1
    assert moved("mcp_tool_calls_total", provider="github", tool="getIssues", success="true") == 1
    assert moved("agent_stops_total", reason="final_answer") == 1
    assert moved("agent_stops_total", reason="error") == 1  # the refused attempt
    assert moved("agent_iterations_count") == 2
    assert moved("agent_iterations_sum") == 1 + 2  # the attempt that stopped at 1, then 2
    assert len(mcp_server.calls) == 1
    assert len(fake_anthropic.requests) == 3
    output = (await _execution(api, owner, execution_id))["steps"][0]["output"]
    assert (output["turns"], output["tool_calls"]) == (2, 2)


async def test_another_organization_gets_404_for_the_turns(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
) -> None:
    await connect_tools(api, owner, fake_anthropic)
    fake_anthropic.script(Reply("Hello."))
    workflow_id = await agent_workflow(api, owner, fake_anthropic)
    execution_id = await execute(api, owner, workflow_id, {"ask": "Hi"})
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"
    assert len(await _turns(api, owner, execution_id)) == 1

    stranger = await register(api, label="stranger", organization_name="Other Org")
    path = f"/api/executions/{execution_id}/steps/agent/turns"
    refused = await api.get(path, headers=stranger.headers)
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "not_found"
    missing = await api.get(
        f"/api/executions/{uuid.uuid4()}/steps/agent/turns", headers=owner.headers
    )
    assert missing.status_code == 404
    not_agent = await api.get(
        f"/api/executions/{execution_id}/steps/other/turns", headers=owner.headers
    )
    assert not_agent.status_code == 404


async def test_secrets_in_tool_arguments_and_results_are_redacted_in_the_stored_turns(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
) -> None:
    value = "s3cret-note-key-" + uuid.uuid4().hex
    created = await api.post(
        "/api/secrets",
        json={"name": "NOTE_KEY", "value": value, "allowed_hosts": ["127.0.0.1"]},
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    await connect_tools(api, owner, fake_anthropic, mcp_server)
    fake_anthropic.script(
        Reply("", tool_calls=[("notes__add_note", {"title": "key", "body": value})]),
        Reply("", tool_calls=[("notes__search_notes", {"query": "key"})]),
        Reply("Stored and found."),
    )
    workflow_id = await agent_workflow(
        api,
        owner,
        fake_anthropic,
        prompt="Store the key {{ secrets.NOTE_KEY }} as a note, then find it.",
        tools=[{"connection": "notes", "tools": "all"}],
        allow_writes=True,
    )
    execution_id = await execute(api, owner, workflow_id)
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"
    assert any(value in json.dumps(r.json) for r in fake_anthropic.requests)  # the model saw it

    rows = await _turns(api, owner, execution_id)
    assert rows[1]["input"]["body"] == "[secret:NOTE_KEY]"
    assert rows[3]["output"]["notes"][0]["body"] == "[secret:NOTE_KEY]"
    assert "[secret:NOTE_KEY]" in rows[0]["input"]["prompt"]
    async with system_transaction(queue_runtime.database) as db:
        stored = (
            await db.execute(
                text(
                    "select string_agg(coalesce(input::text, '') || coalesce(output::text, ''), '')"
                    " from execution_agent_turns where execution_id = :e"
                ),
                {"e": execution_id},
            )
        ).scalar_one()
    assert value not in stored


async def test_turns_tool_calls_and_tokens_go_to_the_live_stream(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
) -> None:
    await connect_tools(api, owner, fake_anthropic, mcp_server)
    fake_anthropic.script(
        Reply("Looking.", tool_calls=[SEARCH], input_tokens=50, output_tokens=5),
        Reply("The welcome note says Taskloom keeps notes here."),
    )
    workflow_id = await agent_workflow(
        api, owner, fake_anthropic, tools=[{"connection": "notes", "tools": "read_only"}]
    )
    execution_id = await execute(api, owner, workflow_id, {"ask": "Read"})
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"

    entries = await queue_runtime.redis.xrange(stream_key(queue_runtime.keys, execution_id))
    events = [(fields["event"], json.loads(fields["data"])) for _, fields in entries]
    agent = [(kind, data) for kind, data in events if kind.startswith("agent.")]
    assert [(k, d["turn"], d["phase"]) for k, d in agent] == [
        ("agent.turn", 1, "started"),
        ("agent.turn", 1, "finished"),
        ("agent.tool_call", 1, "started"),
        ("agent.tool_call", 1, "finished"),
        ("agent.turn", 2, "started"),
        ("agent.turn", 2, "finished"),
    ]
    finished_turn = agent[1][1]
    assert finished_turn["model"] == "claude-haiku-4-5"
    assert (finished_turn["input_tokens"], finished_turn["output_tokens"]) == (50, 5)
    assert finished_turn["stop_reason"] == "tool_use"
    call = agent[3][1]
    assert (call["tool"], call["connection"], call["ok"]) == ("notes__search_notes", "notes", True)
    assert call["step_id"] == "agent"
    tokens = [d for kind, d in events if kind == "token"]
    assert "".join(d["text"] for d in tokens if d["turn"] == 1) == "Looking."
    assert "".join(d["text"] for d in tokens if d["turn"] == 2) == (
        "The welcome note says Taskloom keeps notes here."
    )


async def test_agent_arguments_are_checked_when_the_workflow_is_saved(
    api: httpx.AsyncClient, owner: Account
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"prompt": "x", "max_iterations": 51}, "max_iterations"),
        ({"prompt": "x", "max_iterations": "{{ input.n }}"}, "max_iterations"),
        ({"prompt": "x", "tools": [{"connection": "a"}]}, "tools"),
        ({"prompt": "x", "tools": [{"connection": "a", "tool": "t", "tools": "all"}]}, "tools"),
        ({"prompt": "x", "tools": [{"connection": "a", "tools": "some"}]}, "tools"),
        ({"prompt": "x", "tools": [{"connection": "a", "tool": "t", "extra": 1}]}, "tools"),
        ({"prompt": "x", "model": "m", "category": "quick"}, "args"),
        ({"prompt": "x", "max_cost_usd": 0}, "max_cost_usd"),
        ({"prompt": "x", "json_schema": {"type": "nope"}}, "json_schema"),
        ({"prompt": "x", "temperature": 1}, "temperature"),
        ({}, "prompt"),
    ]
    for args, where in cases:
        response = await api.post(
            "/api/workflows",
            json={
                "name": "bad",
                "definition": {"steps": [{"id": "a", "type": "agent", "args": args}]},
            },
            headers=owner.headers,
        )
        assert response.status_code == 422, (args, response.text)
        assert where in response.text, (args, response.text)
    fine = await api.post(
        "/api/workflows",
        json={
            "name": "fine",
            "definition": {
                "steps": [
                    {
                        "id": "a",
                        "type": "agent",
                        "args": {
                            "prompt": "{{ input.ask }}",
                            "category": "quick",
                            "tools": [{"connection": "notes", "tools": "read_only"}],
                            "max_iterations": 50,
                            "max_cost_usd": "0.25",
                        },
                    }
                ]
            },
        },
        headers=owner.headers,
    )
    assert fine.status_code == 201, fine.text


async def test_parallel_tool_calls_of_one_openai_turn_each_get_their_result(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    fake_openai: FakeOpenAI,
    mcp_server: RunningMcpServer,
    fake_github: FakeGitHub,
) -> None:
    await connect_tools(api, owner, fake_openai, mcp_server, fake_github)
    fake_openai.script(
        Reply(
            "",
            tool_calls=[
                ("call_1", "notes__search_notes", {"query": "welcome"}),
                ("call_2", "gh__getIssues", {"state": "open"}),
                ("call_3", "notes__search_notes", {"query": "nothing"}),
            ],
        ),
        Reply("Three lookups done."),
    )
    workflow_id = await agent_workflow(
        api,
        owner,
        fake_openai,
        tools=[
            {"connection": "notes", "tools": "read_only"},
            {"connection": "gh", "tool": "getIssues"},
        ],
    )
    execution_id = await execute(api, owner, workflow_id, {"ask": "Look everywhere"})
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"

    assert [query["query"] for _, query in mcp_server.calls] == ["welcome", "nothing"]
    messages = fake_openai.requests[1].json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "tool"]
    assert [m["tool_call_id"] for m in messages[2:]] == ["call_1", "call_2", "call_3"]
    assert json.loads(messages[2]["content"])["total"] == 1
    assert json.loads(messages[4]["content"])["total"] == 0
    rows = await _turns(api, owner, execution_id)
    assert [(r["kind"], r.get("call_index")) for r in rows] == [
        ("model", None),
        ("tool", 1),
        ("tool", 2),
        ("tool", 3),
        ("model", None),
    ]
    output = (await _execution(api, owner, execution_id))["steps"][0]["output"]
    assert (output["turns"], output["tool_calls"]) == (2, 3)
