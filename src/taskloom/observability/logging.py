"""structlog configuration: JSON lines in production, readable console output otherwise.
Every line carries the request id bound by the request-id middleware."""

from __future__ import annotations

import logging
import sys

import structlog

from taskloom.config import Settings


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.uses_json_logs
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    # These log every request's full URL at INFO; tenants' URLs (webhooks, http steps, MCP
    # servers) may carry tokens in their path or query. Our own log lines name hosts only.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "mcp", "anthropic", "openai"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
