"""OpenAI, or any OpenAI-compatible server (vLLM, Ollama, LM Studio, llama.cpp), over the
official `openai` SDK (3.x): one Chat Completions call per `complete`.

What reaches the API:
- `model`; `messages` with the system prompt as the first message (`role: system`, which
  compatible servers understand, unlike the newer `developer`).
- The output limit under the name the server honours. Real OpenAI wants `max_completion_tokens`
  (its reasoning models answer 400 to `max_tokens`, which it calls deprecated); compatible servers
  know `max_tokens`, and some silently ignore `max_completion_tokens` (Ollama: the limit is lost
  and a model may write until its context is full). So the default is `max_completion_tokens`
  for api.openai.com and `max_tokens` for any other base URL; `output_limit_param` overrides it.
- `temperature` only when the request sets one (OpenAI's reasoning models take only the default).
- With `json_output`: `response_format={"type": "json_object"}` and the JSON-only instruction in
  the system prompt (OpenAI answers 400 in JSON mode unless the messages say "JSON").
- `X-Request-ID` from `request.request_id` (OpenAI ignores it; vLLM adopts it as its request id).

Tools: `tools` as functions (`parameters` = the JSON Schema); an assistant's calls are its
`tool_calls` (several at once: parallel calls), each result a `role: tool` message. With
`on_text`: `stream=True` and `stream_options={"include_usage": True}`; text deltas reach the
callback, tool calls are put together from their deltas by index, the usage comes last.

Only the constructor's arguments count: the key and base URL are always passed, so
`OPENAI_API_KEY` and `OPENAI_BASE_URL` are never read; `OPENAI_ORG_ID` / `OPENAI_PROJECT_ID`
(sent as headers) and `OPENAI_CUSTOM_HEADERS` are dropped after the SDK read them.

Tokens: `usage.prompt_tokens` (cached tokens included) and `usage.completion_tokens` (reasoning
tokens included). A response without `usage` (some compatible servers) counts 0 and 0.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar, Literal

import httpx2
import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolParam,
    ChatCompletionUserMessageParam,
)
from openai.types.shared_params import ResponseFormatJSONObject

from taskloom.ai.providers import (
    call_deadline,
    status_error,
    system_prompt,
    transport_error,
)
from taskloom.ai.providers.base import AiRequest, AiResponse, Message, ToolCall, ToolSpec
from taskloom.net import TargetNotAllowed

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_OPENAI_HOST = "api.openai.com"

OutputLimitParam = Literal["max_completion_tokens", "max_tokens"]


class OpenAIProvider:
    """`complete` sends one Chat Completions request; the SDK retries 408/409/429/5xx, timeouts
    and connection errors up to `max_retries` times with backoff (honouring `retry-after` up to
    120 s, and not retrying when asked to wait longer); what fails after that is raised as
    `AiProviderError`."""

    name: ClassVar[str] = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        http_client: httpx2.AsyncClient | None,
        timeout: float,
        max_retries: int,
        output_limit_param: OutputLimitParam | None = None,
    ) -> None:
        if not api_key:  # a local server that needs none still gets one: the SDK insists
            raise ValueError("OpenAIProvider needs an API key (any text for a keyless server)")
        self._api_key = api_key
        self._base_url = base_url or DEFAULT_BASE_URL
        self._owns_http_client = http_client is None
        self._timeout = timeout
        self._max_retries = max_retries
        self._output_limit_param: OutputLimitParam = output_limit_param or (
            "max_completion_tokens"
            if httpx2.URL(self._base_url).host == _OPENAI_HOST
            else "max_tokens"
        )
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=self._base_url,
            http_client=http_client,
            timeout=timeout,
            max_retries=max_retries,
        )
        # The SDK fills these from OPENAI_ORG_ID, OPENAI_PROJECT_ID and OPENAI_CUSTOM_HEADERS
        # (an Authorization there would win over the key); this provider sends none of them.
        self._client.organization = None
        self._client.project = None
        self._client._custom_headers = {}

    async def complete(self, request: AiRequest) -> AiResponse:
        new_name = self._output_limit_param == "max_completion_tokens"
        headers = {"X-Request-ID": request.request_id} if request.request_id else None
        deadline = call_deadline(timeout=self._timeout, max_retries=self._max_retries)
        try:
            async with asyncio.timeout(deadline):
                arguments: dict[str, Any] = {
                    "model": request.model,
                    "messages": _messages(request),
                    "max_completion_tokens": request.max_tokens if new_name else openai.omit,
                    "max_tokens": openai.omit if new_name else request.max_tokens,
                    "temperature": (
                        request.temperature if request.temperature is not None else openai.omit
                    ),
                    "response_format": (
                        ResponseFormatJSONObject(type="json_object")
                        if request.json_output
                        else openai.omit
                    ),
                    "tools": [_tool_param(t) for t in request.tools] or openai.omit,
                    "extra_headers": headers,
                }
                if request.on_text is None:
                    completion = await self._client.chat.completions.create(**arguments)
                    response = _response(completion)
                else:
                    response = await self._streamed(request, arguments)
        except openai.APIStatusError as err:
            # The SDK passes the `error` object of the body (or the raw body) as `body`.
            body: Any = err.body
            error = body if isinstance(body, dict) else {}
            raise status_error(
                provider=self.name,
                status=err.status_code,
                error_type=error.get("type"),
                message=error.get("message") or (body if isinstance(body, str) else None),
                api_key=self._api_key,
            ) from None
        except (openai.OpenAIError, TargetNotAllowed, TimeoutError) as err:
            raise transport_error(
                err,
                sdk=openai,
                provider=self.name,
                timeout=self._timeout,
                deadline=deadline,
                base_url=self._base_url,
                api_key=self._api_key,
            ) from err
        return response

    async def _streamed(self, request: AiRequest, arguments: dict[str, Any]) -> AiResponse:
        """One streamed call: text deltas go to `request.on_text` as they come; tool calls are
        put together from their deltas (by `index`: the id and name come first, the arguments
        in pieces); the usage comes in the last chunk (`include_usage`)."""
        assert request.on_text is not None
        stream = await self._client.chat.completions.create(
            **arguments, stream=True, stream_options={"include_usage": True}
        )
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage: Any = None
        model, stop_reason = request.model, None
        async with stream:
            async for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                        await request.on_text(delta.content)
                    for piece in delta.tool_calls or ():
                        call = calls.setdefault(piece.index, {"id": "", "name": "", "args": []})
                        call["id"] = piece.id or call["id"]
                        if piece.function is not None:
                            call["name"] += piece.function.name or ""
                            call["args"].append(piece.function.arguments or "")
                    stop_reason = choice.finish_reason or stop_reason
        return AiResponse(
            text="".join(text),
            input_tokens=getattr(usage, "prompt_tokens", None) or 0,
            output_tokens=getattr(usage, "completion_tokens", None) or 0,
            model=model,
            stop_reason=stop_reason,
            tool_calls=tuple(
                ToolCall(id=c["id"], name=c["name"], arguments=_arguments("".join(c["args"])))
                for _, c in sorted(calls.items())
            ),
        )

    async def aclose(self) -> None:
        """Close the connection pool the SDK made; an `http_client` passed in stays open."""
        if self._owns_http_client:
            await self._client.close()


def _messages(request: AiRequest) -> list[ChatCompletionMessageParam]:
    messages: list[ChatCompletionMessageParam] = []
    system = system_prompt(request.system, json_output=request.json_output)
    if system is not None:
        messages.append(ChatCompletionSystemMessageParam(role="system", content=system))
    for message in request.messages:
        messages.extend(_message_param(message))
    return messages


def _message_param(message: Message) -> list[ChatCompletionMessageParam]:
    """A neutral message as OpenAI's: an assistant's `tool_calls`, and one `role: tool`
    message per result."""
    if message.role == "tool":
        return [
            {"role": "tool", "tool_call_id": result.tool_call_id, "content": result.content}
            for result in message.tool_results
        ]
    if message.role == "user":
        return [ChatCompletionUserMessageParam(role="user", content=message.content)]
    if not message.tool_calls:
        return [ChatCompletionAssistantMessageParam(role="assistant", content=message.content)]
    return [
        ChatCompletionAssistantMessageParam(
            role="assistant",
            content=message.content or None,
            tool_calls=[
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                }
                for call in message.tool_calls
            ],
        )
    ]


def _tool_param(tool: ToolSpec) -> ChatCompletionToolParam:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.input_schema,
        },
    }


def _arguments(text: str) -> dict[str, Any]:
    """A tool call's arguments (a JSON object as text, by the API's rule). Text that is not one
    is kept whole, so the tool's argument check reports it to the model."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"_unparsed": text}
    return value if isinstance(value, dict) else {"_unparsed": text}


def _response(completion: ChatCompletion) -> AiResponse:
    # Compatible servers are not always complete: no choices, no content, no usage.
    choice = completion.choices[0] if completion.choices else None
    usage: Any = getattr(completion, "usage", None)
    calls = (choice.message.tool_calls or []) if choice is not None else []
    return AiResponse(
        text=(choice.message.content or "") if choice is not None else "",
        input_tokens=getattr(usage, "prompt_tokens", None) or 0,
        output_tokens=getattr(usage, "completion_tokens", None) or 0,
        model=completion.model,
        stop_reason=choice.finish_reason if choice is not None else None,
        tool_calls=tuple(
            ToolCall(id=c.id, name=c.function.name, arguments=_arguments(c.function.arguments))
            for c in calls
            if c.type == "function"
        ),
    )
