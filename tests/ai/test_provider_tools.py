"""Native tool calling and streaming of both providers, over the official SDKs against the fake
APIs (tests/fakes/ai_apis.py): what goes on the wire (Anthropic `tools`, `tool_use` and
`tool_result` blocks; OpenAI `tools`, `tool_calls` and `role: tool` messages), what comes back
(parallel calls included), and the same answer whether it streamed or not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest

from taskloom.ai.providers.anthropic import AnthropicProvider
from taskloom.ai.providers.base import (
    AiProvider,
    AiProviderError,
    AiRequest,
    Message,
    ToolCall,
    ToolResult,
    ToolSpec,
)
from taskloom.ai.providers.openai import OpenAIProvider
from tests.fakes.ai_apis import FakeAnthropic, FakeOpenAI, Reply

WEATHER = ToolSpec(
    name="weather__lookup",
    description="The weather in a city",
    input_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


@pytest.fixture
async def http_client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as client:
        yield client


@pytest.fixture(params=["anthropic", "openai"])
def pair(
    request: pytest.FixtureRequest, http_client: httpx2.AsyncClient
) -> tuple[FakeAnthropic | FakeOpenAI, AiProvider]:
    fake = request.getfixturevalue(f"fake_{request.param}")
    cls = AnthropicProvider if request.param == "anthropic" else OpenAIProvider
    provider = cls(
        api_key=fake.api_key,
        base_url=fake.base_url,
        http_client=http_client,
        timeout=5.0,
        max_retries=0,
    )
    return fake, provider


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_parallel_tool_calls_come_back_and_their_results_go_out_in_the_apis_shape(
    pair: tuple[FakeAnthropic | FakeOpenAI, AiProvider], streamed: bool
) -> None:
    fake, provider = pair
    deltas: list[str] = []

    async def on_text(text: str) -> None:
        deltas.append(text)

    fake.script(
        Reply(
            "Let me look both up.",
            tool_calls=[
                ("call_1", "weather__lookup", {"city": "Oslo"}),
                ("call_2", "weather__lookup", {"city": "Lima, Perú"}),
            ],
            input_tokens=40,
            output_tokens=12,
        ),
        Reply("Oslo is cold, Lima is mild.", input_tokens=90, output_tokens=9),
    )
    first = await provider.complete(
        AiRequest(
            model="m",
            messages=[Message("user", "Weather in Oslo and Lima?")],
            max_tokens=100,
            tools=(WEATHER,),
            on_text=on_text if streamed else None,
        )
    )
    assert first.tool_calls == (
        ToolCall("call_1", "weather__lookup", {"city": "Oslo"}),
        ToolCall("call_2", "weather__lookup", {"city": "Lima, Perú"}),
    )
    assert first.text == "Let me look both up."
    assert (first.input_tokens, first.output_tokens) == (40, 12)
    assert first.stop_reason == ("tool_use" if isinstance(fake, FakeAnthropic) else "tool_calls")

    second = await provider.complete(
        AiRequest(
            model="m",
            messages=[
                Message("user", "Weather in Oslo and Lima?"),
                Message("assistant", first.text, tool_calls=first.tool_calls),
                Message(
                    "tool",
                    tool_results=(
                        ToolResult("call_1", '{"temp": -3}'),
                        ToolResult("call_2", "lookup failed", is_error=True),
                    ),
                ),
            ],
            max_tokens=100,
            tools=(WEATHER,),
            on_text=on_text if streamed else None,
        )
    )
    assert second.text == "Oslo is cold, Lima is mild."
    assert second.tool_calls == ()
    assert (second.input_tokens, second.output_tokens) == (90, 9)
    if streamed:
        assert "".join(deltas) == "Let me look both up.Oslo is cold, Lima is mild."
        assert len(deltas) > 2  # delivered in pieces, as they came
    else:
        assert deltas == []

    sent = fake.requests[-1].json
    assert sent.get("stream", False) is streamed
    if isinstance(fake, FakeAnthropic):
        assert sent["tools"] == [
            {
                "name": "weather__lookup",
                "description": "The weather in a city",
                "input_schema": WEATHER.input_schema,
            }
        ]
        assert sent["messages"][1]["content"][1:] == [
            {
                "type": "tool_use",
                "id": "call_1",
                "name": "weather__lookup",
                "input": {"city": "Oslo"},
            },
            {
                "type": "tool_use",
                "id": "call_2",
                "name": "weather__lookup",
                "input": {"city": "Lima, Perú"},
            },
        ]
        assert sent["messages"][2] == {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": '{"temp": -3}',
                    "is_error": False,
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": "lookup failed",
                    "is_error": True,
                },
            ],
        }
    else:
        assert sent["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "weather__lookup",
                    "description": "The weather in a city",
                    "parameters": WEATHER.input_schema,
                },
            }
        ]
        assert [c["id"] for c in sent["messages"][1]["tool_calls"]] == ["call_1", "call_2"]
        assert sent["messages"][2:] == [
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": -3}'},
            {"role": "tool", "tool_call_id": "call_2", "content": "lookup failed"},
        ]
        if streamed:
            assert sent["stream_options"] == {"include_usage": True}


async def test_a_conversation_missing_a_tool_result_is_refused_as_the_apis_refuse_it(
    pair: tuple[FakeAnthropic | FakeOpenAI, AiProvider],
) -> None:
    """The fakes check what the real APIs check, so a loop that forgot a result would fail."""
    _, provider = pair
    with pytest.raises(AiProviderError) as raised:
        await provider.complete(
            AiRequest(
                model="m",
                messages=[
                    Message("user", "Hi"),
                    Message(
                        "assistant", "", tool_calls=(ToolCall("call_9", "weather__lookup", {}),)
                    ),
                    Message("user", "well?"),
                ],
                max_tokens=10,
                tools=(WEATHER,),
            )
        )
    assert raised.value.code == "ai_bad_request"
    assert "call_9" in raised.value.message
