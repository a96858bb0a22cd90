"""The execution page shows an agent step's conversation, server-rendered: each model turn
(text, the tools it asked for, tokens and cost) and each tool call (arguments, result or
error), with no inline script."""

from __future__ import annotations

import httpx

from taskloom.runtime import Runtime
from tests.executions.agent_support import agent_workflow, connect_tools, run_here
from tests.factories import Account
from tests.fakes.ai_apis import FakeAnthropic, Reply
from tests.fakes.mcp_server import RunningMcpServer
from tests.web.conftest import Browser
from tests.web.support import browser_for, text_of
from tests.workers import execute


async def test_the_execution_page_shows_the_agent_conversation(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    queue_browser: Browser,
    fake_anthropic: FakeAnthropic,
    mcp_server: RunningMcpServer,
) -> None:
    await connect_tools(api, owner, fake_anthropic, mcp_server)
    fake_anthropic.script(
        Reply(
            "Let me search <the notes>.",
            tool_calls=[("call_p", "notes__search_notes", {"query": "welcome"})],
            input_tokens=1000,
            output_tokens=10,
        ),
        Reply("The note welcomes you.", input_tokens=2000, output_tokens=5),
    )
    workflow_id = await agent_workflow(
        api, owner, fake_anthropic, tools=[{"connection": "notes", "tools": "read_only"}]
    )
    execution_id = await execute(api, owner, workflow_id, {"ask": "What do the notes say?"})
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"

    page = await (await browser_for(queue_browser, owner)).get(f"/ui/executions/{execution_id}")
    assert page.status_code == 200
    text = text_of(page)
    assert "Conversation: 2 model turns, 1 tool calls" in text
    assert "What do the notes say?" in text
    assert "Turn 1 · model claude-haiku-4-5 succeeded · 1000 in · 10 out · US$ 0.001050" in text
    assert "Let me search <the notes>." in text
    assert "&lt;the notes&gt;" in page.text  # escaped, never markup
    assert "Asked for: notes__search_notes" in text
    assert "Tool call notes / search_notes succeeded" in text
    assert f"key {execution_id}:agent:1:call_p" in text
    assert "Taskloom keeps notes here." in text  # the tool's result
    assert "The note welcomes you." in text
    assert "<script>" not in page.text
