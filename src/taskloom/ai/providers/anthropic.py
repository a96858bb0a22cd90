"""Claude over the official `anthropic` SDK (2.x): one Messages API call per `complete`.

What reaches the API:
- `model`, `max_tokens`, `messages`, and `system` at the top level (never inside `messages`);
  with `json_output` the system prompt ends with an instruction to answer with one JSON object
  (the caller parses the text).
- `X-Request-ID` from `request.request_id`.
- Not `temperature`: SDK 2.x sends API version 2026-10-21, which answers 400 to any
  `temperature`, `top_p` or `top_k` (even 1.0), and the SDK no longer has those parameters. The
  request's temperature is therefore ignored here. Not `metadata` either (the API's `metadata`
  takes only a `user_id`); it stays with the executor.

Only the constructor's arguments count: the key and base URL are always passed, so
`ANTHROPIC_API_KEY`, `ANTHROPIC_AUTH_TOKEN`, `ANTHROPIC_BASE_URL`, profiles and federation
settings in the environment are never read; headers from `ANTHROPIC_CUSTOM_HEADERS` are dropped;
the SDK's OpenTelemetry spans stay metadata-only whatever `ANTHROPIC_OPEN_TELEMETRY*` says.

Tools: `tools` (name, description, input_schema); an assistant's calls are `tool_use` blocks and
their results `tool_result` blocks of the next user message. With `on_text` the call goes
through `messages.stream` (the SSE events) and the text deltas reach the callback as they come;
the final message, its tool calls and usage are the same as without.

Tokens: `input_tokens` is every prompt token the call processed, i.e. the API's `input_tokens`
plus `cache_creation_input_tokens` plus `cache_read_input_tokens` (the API reports the three
apart; their sum is the prompt's size). Cached reads cost less than this count suggests.
`output_tokens` includes thinking tokens. A response without `usage` counts 0 and 0.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import anthropic
import httpx2
from anthropic.types import MessageParam, TextBlock, ToolParam, ToolUseBlock

from taskloom.ai.providers import (
    call_deadline,
    status_error,
    system_prompt,
    transport_error,
)
from taskloom.ai.providers.base import AiRequest, AiResponse, Message, ToolCall
from taskloom.net import TargetNotAllowed

DEFAULT_BASE_URL = "https://api.anthropic.com"


class AnthropicProvider:
    """`complete` sends one Messages API request; the SDK retries 408/409/429/5xx/529, timeouts
    and connection errors up to `max_retries` times with backoff (honouring `retry-after`); what
    fails after that is raised as `AiProviderError`."""

    name: ClassVar[str] = "anthropic"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        http_client: httpx2.AsyncClient | None,
        timeout: float,
        max_retries: int,
    ) -> None:
        if not api_key:
            raise ValueError("AnthropicProvider needs an API key")
        self._api_key = api_key
        self._base_url = base_url or DEFAULT_BASE_URL
        self._owns_http_client = http_client is None
        self._timeout = timeout
        self._max_retries = max_retries
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=self._base_url,
            http_client=http_client,
            timeout=timeout,
            max_retries=max_retries,
            # Given an option, the SDK reads none of ANTHROPIC_OPEN_TELEMETRY*: prompts and
            # answers never go into spans. The trace context goes out with each attempt's
            # httpx2 span (observability/httpx2_tracing.py), not twice.
            open_telemetry={
                "traces": {"enabled": True, "content_mode": "metadata_only"},
                "propagation": False,
            },
        )
        # The SDK merges ANTHROPIC_CUSTOM_HEADERS into these (an Authorization there would win
        # over the key); this provider sends no default headers of its own.
        self._client._custom_headers = {}

    async def complete(self, request: AiRequest) -> AiResponse:
        system = system_prompt(request.system, json_output=request.json_output)
        headers = {"X-Request-ID": request.request_id} if request.request_id else None
        deadline = call_deadline(timeout=self._timeout, max_retries=self._max_retries)
        try:
            async with asyncio.timeout(deadline):
                arguments: dict[str, Any] = {
                    "model": request.model,
                    "max_tokens": request.max_tokens,
                    "messages": [_message_param(m) for m in request.messages],
                    "system": system if system is not None else anthropic.omit,
                    "tools": [_tool_param(t) for t in request.tools] or anthropic.omit,
                    "extra_headers": headers,
                }
                if request.on_text is None:
                    message = await self._client.messages.create(**arguments)
                else:  # the SSE stream: text deltas as they come, then the whole message
                    async with self._client.messages.stream(**arguments) as stream:
                        async for event in stream:
                            if event.type == "text" and event.text:
                                await request.on_text(event.text)
                        message = await stream.get_final_message()
        except anthropic.APIStatusError as err:
            # `from None`: the SDK's own message repeats the whole error body.
            raise status_error(
                provider=self.name,
                status=err.status_code,
                error_type=err.type,
                message=err.api_message,
                api_key=self._api_key,
            ) from None
        except (anthropic.AnthropicError, TargetNotAllowed, TimeoutError) as err:
            raise transport_error(
                err,
                sdk=anthropic,
                provider=self.name,
                timeout=self._timeout,
                deadline=deadline,
                base_url=self._base_url,
                api_key=self._api_key,
            ) from err
        return _response(message)

    async def aclose(self) -> None:
        """Close the connection pool the SDK made; an `http_client` passed in stays open."""
        if self._owns_http_client:
            await self._client.close()


def _message_param(message: Message) -> MessageParam:
    """A neutral message as Anthropic's: tool calls are `tool_use` blocks of the assistant's
    message, their results `tool_result` blocks of the next user message."""
    if message.role == "tool":
        return {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": result.tool_call_id,
                    "content": result.content,
                    "is_error": result.is_error,
                }
                for result in message.tool_results
            ],
        }
    if message.role == "user":
        return {"role": "user", "content": message.content}
    if not message.tool_calls:
        return {"role": "assistant", "content": message.content}
    blocks: list[Any] = [{"type": "text", "text": message.content}] if message.content else []
    blocks.extend(
        {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
        for call in message.tool_calls
    )
    return {"role": "assistant", "content": blocks}


def _tool_param(tool: Any) -> ToolParam:
    return {
        "name": tool.name,
        "description": tool.description,
        "input_schema": tool.input_schema,
    }


def _response(message: anthropic.types.Message) -> AiResponse:
    text = "".join(block.text for block in message.content if isinstance(block, TextBlock))
    calls = tuple(
        ToolCall(id=block.id, name=block.name, arguments=_arguments(block.input))
        for block in message.content
        if isinstance(block, ToolUseBlock)
    )
    usage: Any = getattr(message, "usage", None)  # the SDK does not insist on it
    input_tokens = sum(
        getattr(usage, field, None) or 0
        for field in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return AiResponse(
        text=text,
        input_tokens=input_tokens,
        output_tokens=getattr(usage, "output_tokens", None) or 0,
        model=message.model,
        stop_reason=message.stop_reason,
        tool_calls=calls,
    )


def _arguments(value: object) -> dict[str, Any]:
    """A tool_use block's input: an object by the API's rule; anything else is kept whole."""
    return value if isinstance(value, dict) else {"input": value}
