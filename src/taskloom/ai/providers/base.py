"""What an AI provider is: one `complete` call over an official SDK. A provider never retries
beyond the SDK's own bounded retries, never counts metrics and never touches budgets:
`ai/executor.py` does that once for every provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol


@dataclass(frozen=True)
class Message:
    role: Literal["user", "assistant"]
    content: str


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


@dataclass(frozen=True)
class AiResponse:
    text: str
    input_tokens: int
    output_tokens: int
    model: str  # as the provider reported it
    stop_reason: str | None


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
