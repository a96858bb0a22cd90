"""Spans leave without secrets: query strings and userinfo are cut from every URL in them, and
organization secrets' values held by a running execution are replaced by `[secret:NAME]`.

The instrumentations record what they see: a server span's `http.target` / `url.query` carry
the GDPR download's `?token=`, a client span's `http.url` / `url.full` an organization's full
URL (`https://user:key@host/hook?api_key=...`), an exception event httpx's message quoting it.
Rather than chase every attribute of every instrumentation, the exporter is wrapped: each span
is copied with its name, attributes, events and status scrubbed just before it is sent.
Only the SDK's exporter path imports this module (tracing on).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from taskloom.observability import secret_values

# scheme://[userinfo@]host/path[?query][#fragment], inside any text (a message may quote one).
_URL = re.compile(
    r"(?P<keep>[A-Za-z][A-Za-z0-9+.\-]*://)(?:[^/?#\s@'\"<>]*@)?"
    r"(?P<rest>[^?#\s'\"<>]*)(?:\?[^#\s'\"<>]*)?(?:#[^\s'\"<>]*)?"
)
_DROPPED = frozenset({"url.query", "http.query"})  # nothing but the query string
_TARGETS = frozenset({"http.target"})  # a path and its query string, no scheme


def scrub_text(text: str) -> str:
    """`text` with every URL in it cut to scheme, host and path, and every secret value a
    running execution holds replaced by its name (observability/secret_values.py)."""
    return secret_values.scrub(_URL.sub(lambda match: match["keep"] + match["rest"], text))


def _scrub_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return secret_values.scrub(value.split("?", 1)[0]) if key in _TARGETS else scrub_text(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return tuple(_scrub_value(key, item) for item in value)
    return value


def scrub_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """The attributes without query-only keys, every URL in a value scrubbed."""
    return {
        key: _scrub_value(key, value)
        for key, value in (attributes or {}).items()
        if key not in _DROPPED
    }


def _scrubbed(span: ReadableSpan) -> ReadableSpan:
    status = span.status
    if status.description:
        status = Status(status.status_code, scrub_text(status.description))
    return ReadableSpan(
        name=scrub_text(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=scrub_attributes(span.attributes),
        events=[
            Event(event.name, scrub_attributes(event.attributes), event.timestamp)
            for event in span.events
        ],
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ScrubbingExporter(SpanExporter):
    """Exports through `inner` a scrubbed copy of each span."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([_scrubbed(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)
