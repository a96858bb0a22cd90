"""Client spans for httpx2, the fork of httpx the AI and MCP SDKs speak through.

OpenTelemetry's httpx instrumentation patches `httpx` only, so AI and MCP calls made no spans.
This wraps `httpx2.AsyncHTTPTransport.handle_async_request`, the hop every httpx2 request of
Taskloom's takes to the network (`net.plain_transport2` / `net.guarded_transport2`; the MCP
provider's own transport sends through such a client), once per process. Each request gets a
CLIENT span, child of whatever span is current (an `ai` call's `chat <model>`, a `tool` step's
span): the method, scheme, host, port and path (never the query string or userinfo; the exporter
scrubs again in `span_scrubbing.py`), the status code, and the error type when the call fails.
The trace context goes out in a `traceparent` header, as httpx's instrumentation does.
Only `tracing.configure` imports this module (tracing on).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

import httpx2
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

Handler = Callable[[Any, httpx2.Request], Coroutine[Any, Any, httpx2.Response]]
_MARK = "_taskloom_traced"


def request_attributes(request: httpx2.Request) -> dict[str, Any]:
    """The HTTP semantic-convention attributes of `request`: no query string, no userinfo."""
    url = request.url
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    netloc = url.host if url.port is None else f"{url.host}:{url.port}"
    if ":" in url.host:  # an IPv6 literal
        netloc = f"[{url.host}]" if url.port is None else f"[{url.host}]:{url.port}"
    attributes: dict[str, Any] = {
        "http.request.method": request.method,
        "url.scheme": url.scheme,
        "url.full": f"{url.scheme}://{netloc}{url.path}",
        "server.address": url.host,
    }
    if port is not None:
        attributes["server.port"] = port
    return attributes


def _traced(handle: Handler) -> Handler:
    tracer = trace.get_tracer("taskloom.httpx2")

    @functools.wraps(handle)
    async def handle_async_request(self: Any, request: httpx2.Request) -> httpx2.Response:
        with tracer.start_as_current_span(
            request.method,
            kind=SpanKind.CLIENT,
            attributes=request_attributes(request),
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            headers: dict[str, str] = {}
            propagate.inject(headers)
            for name, value in headers.items():
                request.headers[name] = value
            try:
                response = await handle(self, request)
            except Exception as error:
                span.set_attribute("error.type", type(error).__qualname__)
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_attribute("error.type", str(response.status_code))
                span.set_status(Status(StatusCode.ERROR))
            return response

    setattr(handle_async_request, _MARK, True)
    return handle_async_request


def instrument() -> None:
    """Trace every httpx2 request from now on (idempotent)."""
    transport = httpx2.AsyncHTTPTransport
    if not getattr(transport.handle_async_request, _MARK, False):
        transport.handle_async_request = _traced(transport.handle_async_request)  # type: ignore[method-assign,assignment]
