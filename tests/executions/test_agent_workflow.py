"""`agent` steps end to end with real `taskloom worker` processes: the model (the fake Anthropic
and OpenAI APIs, tool calling as documented) calls a tool of a real MCP server and one of
GitHub, and ends with JSON matching the schema; a worker SIGKILLed between two tool calls is
replaced by another that goes on from the committed rows without repeating a finished call."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from tests.executions.agent_support import agent_workflow, connect_tools, tool_names
from tests.factories import Account
from tests.fakes.ai_apis import FakeAnthropic, FakeOpenAI, Reply
from tests.fakes.mcp_server import RunningMcpServer
from tests.fakes.tool_apis import FakeGitHub
from tests.queue.test_tracing import Receiver, receiver  # noqa: F401 (a fixture)
from tests.workers import StartWorker, execute, wait_for_status

SCHEMA = {
    "type": "object",
    "properties": {"issue": {"type": "integer"}, "found": {"type": "integer"}},
    "required": ["issue", "found"],
    "additionalProperties": False,
}


@pytest.fixture(params=["anthropic", "openai"])
def model_api(request: pytest.FixtureRequest) -> FakeAnthropic | FakeOpenAI:
    fake: FakeAnthropic | FakeOpenAI = request.getfixturevalue(f"fake_{request.param}")
    return fake


async def test_a_three_turn_loop_calls_an_mcp_and_a_github_tool_and_ends_in_json(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    model_api: FakeAnthropic | FakeOpenAI,
    mcp_server: RunningMcpServer,
    fake_github: FakeGitHub,
) -> None:
    await connect_tools(api, owner, model_api, mcp_server, fake_github)
    model_api.script(
        Reply(
            "Searching the notes first.",
            tool_calls=[("call_a", "notes__search_notes", {"query": "taskloom"})],
            input_tokens=1000,
            output_tokens=100,
        ),
        Reply(
            "",
            tool_calls=[("call_b", "gh__createIssue", {"title": "Follow up on the notes"})],
            input_tokens=2000,
            output_tokens=100,
        ),
        Reply('{"issue": 1, "found": 1}', input_tokens=3000, output_tokens=20),
    )
    workflow_id = await agent_workflow(
        api,
        owner,
        model_api,
        system="You triage.",
        tools=[
            {"connection": "notes", "tools": "read_only"},
            {"connection": "gh", "tool": "createIssue"},
        ],
        allow_writes=True,
        json_schema=SCHEMA,
    )
    start_worker()
    execution_id = await execute(api, owner, workflow_id, {"ask": "Triage the notes"})
    done = await wait_for_status(api, owner, execution_id)
    assert done["status"] == "succeeded", (done["error"], done["steps"])
    output = done["steps"][0]["output"]
    assert output["json"] == {"issue": 1, "found": 1}
    assert (output["turns"], output["tool_calls"]) == (3, 2)
    # Haiku 4.5 ($1 / $5 per million) or GPT-4.1 nano ($0.10 / $0.40 per million).
    expected = "0.007100" if isinstance(model_api, FakeAnthropic) else "0.000688"
    assert output["cost_usd"] == expected

    # Each tool ran once, through the tool executor, with the call's idempotency key.
    assert mcp_server.calls == [("search_notes", {"query": "taskloom", "limit": 5})]
    posts = [r for r in fake_github.requests if r.method == "POST"]
    assert len(posts) == 1
    assert posts[0].headers["idempotency-key"] == f"{execution_id}:agent:2:call_b"
    keys = {h.get("idempotency-key") for _, h in mcp_server.http_requests}
    assert f"{execution_id}:agent:1:call_a" in keys
    assert [i["title"] for i in fake_github.repos[("octocat", "hello-world")]["items"]] == [
        "Follow up on the notes"
    ]

    # The model saw the read-only MCP tools and the one GitHub tool, and every result.
    sent = [r.json for r in model_api.requests]
    assert len(sent) == 3
    assert sorted(tool_names(sent[0])) == ["gh__createIssue", "notes__search_notes"]
    assert all(r["stream"] is True for r in sent)  # a worker streams (live token events)
    last = json.dumps(sent[2]["messages"])
    assert "Welcome" in last
    assert "Follow up on the notes" in last

    turns = await api.get(
        f"/api/executions/{execution_id}/steps/agent/turns", headers=owner.headers
    )
    assert turns.status_code == 200, turns.text
    rows = turns.json()["turns"]
    assert [(r["turn"], r["kind"], r["status"]) for r in rows] == [
        (1, "model", "succeeded"),
        (1, "tool", "succeeded"),
        (2, "model", "succeeded"),
        (2, "tool", "succeeded"),
        (3, "model", "succeeded"),
    ]
    assert rows[0]["input"] == {"system": "You triage.", "prompt": "Triage the notes"}
    assert rows[0]["output"]["tool_calls"] == [
        {"id": "call_a", "name": "notes__search_notes", "arguments": {"query": "taskloom"}}
    ]
    assert (rows[0]["input_tokens"], rows[0]["output_tokens"]) == (1000, 100)
    assert rows[1]["connection"] == "notes"
    assert rows[1]["tool"] == "search_notes"
    assert rows[1]["output"]["notes"][0]["title"] == "Welcome"
    assert rows[3]["idempotency_key"] == f"{execution_id}:agent:2:call_b"
    assert rows[4]["output"]["text"] == '{"issue": 1, "found": 1}'


async def test_sigkill_between_two_tool_calls_resumes_without_repeating_a_finished_call(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
) -> None:
    """The first turn asks for two calls (parallel tool calls): the search finishes, the slow
    one is running when the worker dies. The next worker does not search again, makes the
    interrupted call once more with the same idempotency key, and does not ask the model for
    the first turn again."""
    await connect_tools(api, owner, fake_anthropic, mcp_server)
    fake_anthropic.script(
        Reply(
            "",
            tool_calls=[
                ("call_1", "notes__search_notes", {"query": "welcome"}),
                ("call_2", "notes__slow", {"seconds": 3}),
            ],
        ),
        Reply("Both done."),
    )
    workflow_id = await agent_workflow(
        api,
        owner,
        fake_anthropic,
        tools=[{"connection": "notes", "tools": "all"}],
        allow_writes=True,
    )
    # Short enough that the next worker takes the job over soon after the kill; long enough
    # that the first call, which imports the SDK, does not lose the lock on a busy machine.
    short_lock = {"queue_lock_duration_ms": 6000, "queue_stalled_interval_ms": 1000}
    victim = start_worker(**short_lock)
    execution_id = await execute(api, owner, workflow_id, {"ask": "Search, then wait"})
    deadline = time.monotonic() + 30
    while not any(name == "slow" for name, _ in mcp_server.calls):
        assert time.monotonic() < deadline, mcp_server.calls
        await asyncio.sleep(0.05)
    victim.send(signal.SIGKILL)
    await asyncio.to_thread(victim.wait, 10)

    start_worker(**short_lock)
    done = await wait_for_status(api, owner, execution_id, within=60)
    assert done["status"] == "succeeded", (done["error"], done["steps"])
    assert done["steps"][0]["output"] == {
        "text": "Both done.",
        "turns": 2,
        "tool_calls": 2,
        "cost_usd": done["steps"][0]["output"]["cost_usd"],
    }
    # The tool server's own log: the finished search once, the interrupted call twice.
    assert [name for name, _ in mcp_server.calls] == ["search_notes", "slow", "slow"]
    slow_keys = [
        h.get("idempotency-key")
        for method, h in mcp_server.http_requests
        if method == "POST" and h.get("idempotency-key", "").endswith(":call_2")
    ]
    assert set(slow_keys) == {f"{execution_id}:agent:1:call_2"}
    assert len(fake_anthropic.requests) == 2  # the first turn was not asked again

    turns = await api.get(
        f"/api/executions/{execution_id}/steps/agent/turns", headers=owner.headers
    )
    rows = turns.json()["turns"]
    assert [(r["turn"], r["kind"], r["attempts"], r["status"]) for r in rows] == [
        (1, "model", 1, "succeeded"),
        (1, "tool", 1, "succeeded"),
        (1, "tool", 2, "succeeded"),
        (2, "model", 1, "succeeded"),
    ]


async def test_each_turn_and_tool_call_is_a_genai_span_under_the_steps_span(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
    receiver: tuple[Receiver, str],  # noqa: F811 (the fixture imported above)
) -> None:
    collected, endpoint = receiver
    await connect_tools(api, owner, fake_anthropic, mcp_server)
    fake_anthropic.script(
        Reply(
            "",
            tool_calls=[("call_s", "notes__search_notes", {"query": "welcome"})],
            input_tokens=70,
            output_tokens=7,
        ),
        Reply("Found it.", input_tokens=90, output_tokens=3),
    )
    workflow_id = await agent_workflow(
        api, owner, fake_anthropic, tools=[{"connection": "notes", "tools": "read_only"}]
    )
    worker = start_worker(otel_exporter_otlp_endpoint=endpoint, otel_bsp_schedule_delay=100)
    execution_id = await execute(api, owner, workflow_id, {"ask": "Find"})
    done = await wait_for_status(api, owner, execution_id)
    assert done["status"] == "succeeded", done["error"]
    worker.send(signal.SIGTERM)  # flushes the spans
    await asyncio.to_thread(worker.wait, 30)

    spans = [s for s in collected.spans if s["service"] == "taskloom-worker"]
    step = next(s for s in spans if s["name"] == "step agent")
    chats = [s for s in spans if s["name"] == "chat claude-haiku-4-5"]
    assert [c["parent_id"] for c in chats] == [step["span_id"]] * 2
    assert [
        (c["values"]["gen_ai.operation.name"], c["values"]["gen_ai.usage.input_tokens"])
        for c in chats
    ] == [("chat", 70), ("chat", 90)]
    (tool,) = [s for s in spans if s["name"] == "execute_tool search_notes"]
    assert tool["parent_id"] == step["span_id"]
    assert tool["values"]["gen_ai.operation.name"] == "execute_tool"
    assert tool["values"]["gen_ai.tool.name"] == "search_notes"
    assert tool["values"]["gen_ai.tool.call.id"] == "call_s"
    assert tool["trace_id"] == step["trace_id"]
