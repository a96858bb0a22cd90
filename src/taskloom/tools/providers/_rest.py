"""What the Notion, Linear and GitHub providers do alike: validate stored credentials and
arguments without echoing them, build URLs under a connection's base URL (which may carry a
path prefix, as GitHub Enterprise's `/api/v3` does), send a request (one deadline for the whole
exchange, at most 4 MiB read) turning timeouts and connection errors into retryable ToolErrors
that name the host only, and read a JSON body."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from taskloom.outbound import ResponseTooLarge, send_bounded
from taskloom.tools.base import Connection, Tool, ToolArgs, ToolError

ModelT = TypeVar("ModelT", bound=BaseModel)
ArgsT = TypeVar("ArgsT", bound=ToolArgs)

# Of one answer. Tools return trimmed JSON; a longer answer is an error, not a truncated one.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


def validated(model: type[ModelT], data: Any, *, what: str, code: str) -> ModelT:
    """`model` validated from `data`, or a non-retryable ToolError naming the fields at fault
    (never their values: they may be tokens)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise ToolError(f"{what} are invalid ({problems})", code=code) from None


def builtin_tool(name: str, args: type[ToolArgs], description: str, *, read_only: bool) -> Tool:
    """A tool whose input schema is its Args model's."""
    return Tool(name, description, read_only, args.model_json_schema(), args)


def tool_args(model: type[ArgsT], tool: str, args: dict[str, Any]) -> ArgsT:
    """The arguments of `tool` validated again: `call` may be used without the executor."""
    return validated(model, args, what=f"the arguments of {tool}", code="invalid_args")


def endpoint(connection: Connection, path: str) -> str:
    """The absolute URL of `path` (which starts with "/") under the connection's base URL."""
    return connection.base_url.rstrip("/") + path


async def send(
    http: httpx.AsyncClient,
    provider: str,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    json: Any = None,
    params: dict[str, str | int] | None = None,
) -> httpx.Response:
    """Send one request; the client's timeout bounds the whole exchange (not each read) and at
    most MAX_RESPONSE_BYTES of the answer are read. httpx's own error text is never quoted: it
    may include a header."""
    host = httpx.URL(url).host
    request = http.build_request(method, url, headers=headers, json=json, params=params)
    try:
        return await send_bounded(
            http,
            request,
            deadline_seconds=http.timeout.read,
            max_bytes=MAX_RESPONSE_BYTES,
            truncate=False,
        )
    except (TimeoutError, httpx.TimeoutException):
        raise ToolError(
            f"{host} did not answer in time", code=f"{provider}_unreachable", retryable=True
        ) from None
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise ToolError(
            f"could not talk to {host} ({type(exc).__name__})",
            code=f"{provider}_unreachable",
            retryable=True,
        ) from None
    except ResponseTooLarge as too_large:
        raise ToolError(str(too_large), code=f"{provider}_response_too_large") from None
    except httpx.DecodingError:  # a body that claims gzip/deflate and is not
        raise ToolError(
            f"{provider} answered with a body that does not decompress",
            code=f"{provider}_bad_response",
        ) from None


def json_or_none(response: httpx.Response) -> Any:
    """The parsed body, or None when it is not JSON (an HTML error page from a proxy)."""
    try:
        return response.json()
    except ValueError:
        return None


def json_body(provider: str, response: httpx.Response) -> Any:
    """The parsed body of a 2xx answer; a body that is not JSON is an error."""
    body = json_or_none(response)
    if body is None:
        raise ToolError(
            f"{provider} answered HTTP {response.status_code} with a body that is not JSON",
            code=f"{provider}_bad_response",
            status=response.status_code,
        )
    return body
