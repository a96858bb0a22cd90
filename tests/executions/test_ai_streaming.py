"""An `ai` step in a worker streams (the providers' streaming APIs): its text reaches the
execution's live stream as `token` events while the model writes, and its output is what the
whole answer would have been."""

from __future__ import annotations

import json

import httpx
import pytest

from taskloom.executions.live import stream_key
from taskloom.runtime import Runtime
from tests.executions.agent_support import MODELS, connect_tools, provider_of, run_here
from tests.factories import Account
from tests.fakes.ai_apis import FakeAnthropic, FakeOpenAI
from tests.workers import create_workflow, execute

ANSWER = "Streaming works: every piece of this sentence arrives as its own delta."


@pytest.fixture(params=["anthropic", "openai"])
def model_api(request: pytest.FixtureRequest) -> FakeAnthropic | FakeOpenAI:
    fake: FakeAnthropic | FakeOpenAI = request.getfixturevalue(f"fake_{request.param}")
    return fake


async def test_an_ai_steps_tokens_reach_the_live_stream(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    model_api: FakeAnthropic | FakeOpenAI,
) -> None:
    await connect_tools(api, owner, model_api)
    model_api.reply(ANSWER, input_tokens=30, output_tokens=15)
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "ask",
                "type": "ai",
                "args": {"model": MODELS[provider_of(model_api)], "prompt": "Say it"},
            }
        ],
    )
    execution_id = await execute(api, owner, workflow_id)
    assert await run_here(queue_runtime, owner, execution_id) == "succeeded"

    assert model_api.requests[0].json["stream"] is True
    done = await api.get(f"/api/executions/{execution_id}", headers=owner.headers)
    output = done.json()["steps"][0]["output"]
    assert output["text"] == ANSWER
    assert (output["usage"]["input_tokens"], output["usage"]["output_tokens"]) == (30, 15)
    entries = await queue_runtime.redis.xrange(stream_key(queue_runtime.keys, execution_id))
    tokens = [json.loads(f["data"]) for _, f in entries if f["event"] == "token"]
    assert "".join(t["text"] for t in tokens) == ANSWER
    assert {t["step_id"] for t in tokens} == {"ask"}
