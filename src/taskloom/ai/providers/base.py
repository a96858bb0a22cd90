"""What an AI provider is: one `complete` call over an official SDK. A provider never retries
beyond the SDK's own bounded retries, never counts metrics and never touches budgets:
`ai/executor.py` does that once for every provider.

A conversation is a list of `Message`s in a provider-neutral shape: a user's text, an
assistant's text and the tools it called (`tool_calls`), and the results of those calls
(`role: "tool"`, one message holding every result of the turn before). Each provider maps it to
its own API: Anthropic `tool_use` / `tool_result` content blocks, OpenAI `tool_calls` and one
`role: tool` message per result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

OnText = Callable[[str], Awaitable[None]]  # a streamed call's text deltas, as they arrive


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model: `name` matches ^[a-zA-Z0-9_-]{1,64}$ (both APIs' rule)."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """A tool the model asked to call: the API's call id, the tool's name, its arguments."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    tool_call_id: str
    content: str  # the result as text (JSON for structured results)
    is_error: bool = False


@dataclass(frozen=True)
class Message:
    role: Literal["user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_results: tuple[ToolResult, ...] = ()  # role "tool": the previous turn's results


@dataclass(frozen=True)
class AiRequest:
    model: str  # the provider's model id, e.g. "claude-sonnet-4-5"
    messages: list[Message]
    max_tokens: int
    system: str | None = None
    temperature: float | None = None
    json_output: bool = False  # ask the model for one JSON object
    request_id: str | None = None  # sent as X-Request-ID
    metadata: dict[str, str] = field(default_factory=dict)
    tools: tuple[ToolSpec, ...] = ()
    # Given: the call streams (the provider's streaming API) and text deltas come here.
    on_text: OnText | None = None


@dataclass(frozen=True)
class AiResponse:
    text: str
    input_tokens: int
    output_tokens: int
    model: str  # as the provider reported it
    stop_reason: str | None
    tool_calls: tuple[ToolCall, ...] = ()


class AiProviderError(Exception):
    """The call failed after the SDK's own retries. `message` is shown to users and never holds
    the API key or a header value. `retryable`: 408/409/429/5xx/529 (overloaded), timeouts and
    connection errors; not 400/401/403/404/422."""

    def __init__(
        self, message: str, *, code: str, retryable: bool, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.status = status


class AiProvider(Protocol):
    name: ClassVar[str]  # "anthropic" | "openai"

    async def complete(self, request: AiRequest) -> AiResponse: ...
