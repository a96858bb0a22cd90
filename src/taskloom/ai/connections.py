"""`anthropic` and `openai` connections: an organization's own API key (and base URL) for AI
steps. They are stored and managed like tool connections (encrypted, admin-only) but expose no
tools; `check` lists the provider's models, which costs no tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import httpx2
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from taskloom.tools.base import Connection, Tool, ToolError

if TYPE_CHECKING:  # the SDKs are imported when a check runs (seconds of import time)
    pass


class ApiKeyCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr = Field(min_length=1)


class NoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_error(provider: str, exc: Exception) -> ToolError:
    import anthropic
    import openai

    if isinstance(exc, anthropic.APIStatusError | openai.APIStatusError):
        status = exc.status_code
        retryable = status == 429 or status >= 500
        return ToolError(
            f"{provider} answered HTTP {status}",
            code=f"{provider}_http_{status}",
            retryable=retryable,
            status=status,
        )
    return ToolError(f"could not reach {provider}", code=f"{provider}_unreachable", retryable=True)


class _AiKeys:
    name: ClassVar[str]
    default_base_url: ClassVar[str]
    Credentials: ClassVar[type[BaseModel]] = ApiKeyCredentials
    Config: ClassVar[type[BaseModel]] = NoConfig

    async def tools(self, connection: Connection, http: Any) -> list[Tool]:
        return []

    async def call(self, connection: Connection, http: Any, tool: str, args: dict[str, Any]) -> Any:
        raise ToolError(
            f"{self.name} connections hold an API key for `ai` steps; they have no tools",
            code="unknown_tool",
        )


class AnthropicKeys(_AiKeys):
    name: ClassVar[str] = "anthropic"
    default_base_url: ClassVar[str] = "https://api.anthropic.com"

    async def check(self, connection: Connection, http: httpx2.AsyncClient) -> dict[str, Any]:
        import anthropic

        client = anthropic.AsyncAnthropic(
            api_key=str(connection.credentials["api_key"]),
            base_url=connection.base_url,
            http_client=http,
            max_retries=0,
        )
        try:
            page = await client.models.list(limit=5)
        except (anthropic.APIError, httpx2.HTTPError) as exc:
            raise _check_error("anthropic", exc) from None
        return {"models": [model.id for model in page.data]}


class OpenAIKeys(_AiKeys):
    name: ClassVar[str] = "openai"
    default_base_url: ClassVar[str] = "https://api.openai.com/v1"

    async def check(self, connection: Connection, http: httpx2.AsyncClient) -> dict[str, Any]:
        import openai

        client = openai.AsyncOpenAI(
            api_key=str(connection.credentials["api_key"]),
            base_url=connection.base_url,
            http_client=http,
            max_retries=0,
        )
        try:
            page = await client.models.list()
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise _check_error("openai", exc) from None
        return {"models": [model.id for model in page.data][:5]}
