"""What the agent-step tests share: the organization's connections (a model API, the notes MCP
server, GitHub), an agent workflow, and running an execution's graph in this process (as the
runner does) where a test needs this process's metrics or spans."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from taskloom.executions import state
from taskloom.executions.engine import Engine
from taskloom.executions.template_process import TemplateRenderer
from taskloom.runtime import Runtime
from tests.factories import Account
from tests.fakes.ai_apis import FakeAnthropic, FakeOpenAI
from tests.fakes.mcp_server import RunningMcpServer
from tests.fakes.tool_apis import FakeGitHub
from tests.tools.conftest import connect
from tests.workers import create_workflow

MODELS = {"anthropic": "claude-haiku-4-5", "openai": "gpt-4.1-nano"}


async def connect_tools(
    api: httpx.AsyncClient,
    owner: Account,
    model_api: FakeAnthropic | FakeOpenAI,
    mcp_server: RunningMcpServer | None = None,
    github: FakeGitHub | None = None,
) -> None:
    provider = "anthropic" if isinstance(model_api, FakeAnthropic) else "openai"
    await connect(api, owner, provider, model_api.base_url, {"api_key": model_api.api_key})
    if mcp_server is not None:
        await connect(
            api, owner, "mcp", mcp_server.url, {"bearer_token": "test-mcp-token"}, name="notes"
        )
    if github is not None:
        await connect(
            api,
            owner,
            "github",
            github.base_url,
            {"token": github.token},
            name="gh",
            config={"owner": "octocat", "repo": "hello-world"},
        )


def provider_of(model_api: FakeAnthropic | FakeOpenAI) -> str:
    return "anthropic" if isinstance(model_api, FakeAnthropic) else "openai"


async def agent_workflow(
    api: httpx.AsyncClient, owner: Account, model_api: FakeAnthropic | FakeOpenAI, **args: Any
) -> str:
    """A workflow of one agent step `agent` with these arguments (the model of the fake's
    provider unless `model` or `category` is given)."""
    if "category" not in args:
        args.setdefault("model", MODELS[provider_of(model_api)])
    args.setdefault("prompt", "{{ input.ask }}")
    return await create_workflow(api, owner, [{"id": "agent", "type": "agent", "args": args}])


async def run_here(runtime: Runtime, owner: Account, execution_id: str) -> str:
    """Claim the execution and run its graph in this process; its final status."""
    assert owner.org_id is not None
    _, run = await state.claim(
        runtime.database,
        execution_id=uuid.UUID(execution_id),
        org_id=owner.org_id,
        max_running=50,
    )
    assert run is not None
    templates = TemplateRenderer.from_settings(runtime.settings)

    async def progressed() -> None:
        return None

    try:
        finished = await Engine(runtime, templates, run, on_progress=progressed).execute()
    finally:
        await templates.aclose()
    return finished.status


def tool_names(request_json: dict[str, Any]) -> list[str]:
    """The tool names a request offered, in either API's shape."""
    tools = request_json.get("tools") or []
    return [t["function"]["name"] if "function" in t else t["name"] for t in tools]
