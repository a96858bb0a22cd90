"""`http` connections: a base URL and the headers that authenticate to it (`Authorization`, an
API key header...), stored encrypted like every connection's credentials. An `http` step names
the connection instead of writing the headers inline (executions/steps/http.py): its `url` is
then a path under the base URL, and the headers are added when the request is sent. Such a
connection has no tools; `check` sends one GET to the base URL."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from taskloom.tools.base import Connection, Tool, ToolError

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header name (RFC 9110)


class HttpCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    headers: dict[str, SecretStr] = Field(default_factory=dict, max_length=20)

    @field_validator("headers")
    @classmethod
    def _plain(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not _TOKEN.match(name):
                raise ValueError("header names may only hold letters, digits and !#$%&'*+-.^_`|~")
            if any(c in secret.get_secret_value() for c in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} contains a line break or NUL")
        return value


class NoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpConnectionProvider:
    name: ClassVar[str] = "http"
    default_base_url: ClassVar[str] = ""  # none: an http connection names its own
    Credentials: ClassVar[type[BaseModel]] = HttpCredentials
    Config: ClassVar[type[BaseModel]] = NoConfig

    async def tools(self, connection: Connection, http: Any) -> list[Tool]:
        return []

    async def call(self, connection: Connection, http: Any, tool: str, args: dict[str, Any]) -> Any:
        raise ToolError(
            "http connections are used by `http` steps (`connection`); they have no tools",
            code="unknown_tool",
        )

    async def check(self, connection: Connection, http: httpx.AsyncClient) -> dict[str, Any]:
        """One GET of the base URL with the connection's headers: any answer below 500 other
        than 401 and 403 counts as reached."""
        headers = {str(k): str(v) for k, v in connection.credentials.get("headers", {}).items()}
        try:
            response = await http.get(connection.base_url, headers=headers)
        except httpx.HTTPError as exc:
            raise ToolError(
                f"could not reach {httpx.URL(connection.base_url).host} ({type(exc).__name__})",
                code="http_unreachable",
                retryable=True,
            ) from None
        status = response.status_code
        if status in (401, 403) or status >= 500:
            raise ToolError(
                f"{response.url.host} answered HTTP {status}",
                code=f"http_http_{status}",
                retryable=status >= 500,
                status=status,
            )
        return {"status": status}
