"""Logging: one format for every line on stderr. JSON lines when LOG_JSON (production's default),
readable console output otherwise. structlog's own lines and the standard library's (uvicorn,
SQLAlchemy, bullmq, asyncio) go through the same processors, so each line carries `timestamp`,
`level`, `logger`, `request_id` (null outside a request or job) and, inside a span,
`trace_id` / `span_id`."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict

from taskloom.config import Settings
from taskloom.observability import secret_values

_HANDLER_NAME = "taskloom"
# These log every request's full URL at INFO; tenants' URLs (webhooks, http steps, MCP servers)
# may carry tokens in their path or query. Our own log lines name hosts only.
_URL_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "mcp", "anthropic", "openai")


class _Stderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was configured: a test
    runner's capture, replaced and closed later, must not keep receiving lines."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR: Any = _Stderr()


class _NamedPrintLogger(structlog.PrintLogger):
    """structlog's fast printer, with the name given to `structlog.get_logger(name)`."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedPrintLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(self._file, str(args[0]) if args else "taskloom")


def _request_id_always(_: Any, __: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("request_id", None)
    return event_dict


def _trace_ids(_: Any, __: str, event_dict: EventDict) -> EventDict:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def _shared_processors() -> list[structlog.typing.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        _request_id_always,
        _trace_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def _scrubbed(render: Any) -> structlog.typing.Processor:
    """The renderer, then every secret value a running execution holds replaced by its name
    (observability/secret_values.py): a line may quote a value from anywhere (an exception, a
    library's message), so the finished line is what is scrubbed."""

    def renderer(logger: Any, method: str, event_dict: EventDict) -> Any:
        line = render(logger, method, event_dict)
        return secret_values.scrub(line) if isinstance(line, str) else line

    return renderer


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper())
    renderer: structlog.typing.Processor = _scrubbed(
        structlog.processors.JSONRenderer()
        if settings.uses_json_logs
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*_shared_processors(), structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_NamedPrintLoggerFactory(_STDERR),
        cache_logger_on_first_use=False,
    )
    # The standard library's records take the same road (ProcessorFormatter's foreign chain).
    handler = logging.StreamHandler(_STDERR)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_shared_processors(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)  # configured again (tests, `taskloom up`): replace, never stack
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in _URL_LOGGERS:
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
