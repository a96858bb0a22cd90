"""OpenTelemetry tracing, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set.

When on: spans for HTTP requests (FastAPI), SQL (SQLAlchemy), Redis and outgoing HTTP (httpx,
and httpx2 for the AI and MCP SDKs: `httpx2_tracing.py`), exported over OTLP/HTTP with query
strings and userinfo cut from every URL in them (`span_scrubbing.py`: tokens ride in both); each
job and each step gets a span, and the trace context travels in the job's data, so a worker's
spans join the trace of the request that queued the job. When off, only the OpenTelemetry API is
imported: its tracer is a no-op and nothing is exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import structlog
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from taskloom import __version__
from taskloom.config import Settings

log = structlog.get_logger("taskloom.tracing")
_provider: Any = None


def enabled() -> bool:
    return _provider is not None


def configure(settings: Settings, *, service: str) -> bool:
    """Install the tracer provider and the library instrumentations, once per process.
    `service` is Taskloom's default service name; OTEL_SERVICE_NAME replaces it."""
    global _provider
    if _provider is not None or not settings.otel_exporter_otlp_endpoint:
        return _provider is not None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from taskloom.observability import httpx2_tracing
    from taskloom.observability.span_scrubbing import ScrubbingExporter

    endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    service = settings.otel_service_name or service
    environment = settings.taskloom_env.value
    resource = Resource.create(
        {
            "service.name": service,
            "service.version": __version__,
            "deployment.environment.name": environment,
            "deployment.environment": environment,  # the name before semconv 1.27
        }
    )
    provider = TracerProvider(resource=resource)
    exporter = ScrubbingExporter(OTLPSpanExporter(endpoint=endpoint))  # no query, no userinfo
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument()
    HTTPXClientInstrumentor().instrument()
    httpx2_tracing.instrument()  # the AI and MCP SDKs' client
    _provider = provider
    log.info("tracing_enabled", service=service, endpoint=endpoint)
    return True


def instrument_app(app: Any) -> None:
    if enabled():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="/health/.*,/metrics")


def instrument_engines(*engines: Any) -> None:
    """SQL spans for these SQLAlchemy async engines."""
    if enabled():
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        SQLAlchemyInstrumentor().instrument(engines=[e.sync_engine for e in engines])


def shutdown(*, timeout_s: float | None = None) -> None:
    """Send what is buffered (on exit: a SIGTERM must not lose the last spans), within
    `timeout_s` when given (a worker's exit is bounded; an unreachable collector loses them)."""
    if _provider is None:
        return
    if timeout_s is not None and not _provider.force_flush(int(timeout_s * 1000)):
        log.warning("spans_not_flushed", timeout_s=round(timeout_s, 2))
    _provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer("taskloom")


def messaging_attributes(*, queue: str, job_id: str | None, operation: str) -> dict[str, str]:
    """The messaging semantic-convention attributes of a job span: `operation` is "send" for the
    producer, "process" for the worker running the job."""
    attributes = {
        "messaging.system": "bullmq",
        "messaging.destination.name": queue,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }
    if job_id is not None:
        attributes["messaging.message.id"] = job_id
    return attributes


def job_span(queue: str, job_id: str | None) -> AbstractContextManager[trace.Span]:
    """The CONSUMER span of a job of `queue` that carries no trace context (webhook deliveries
    and data exports are queued by the outbox dispatcher and a request without the context)."""
    return tracer().start_as_current_span(
        f"job {queue}",
        kind=trace.SpanKind.CONSUMER,
        attributes=messaging_attributes(queue=queue, job_id=job_id, operation="process"),
    )


def current_context_carrier() -> dict[str, str]:
    """The current trace context as a dict for a job's data (empty when tracing is off)."""
    carrier: dict[str, str] = {}
    if enabled():
        propagate.inject(carrier)
    return carrier


def context_from(carrier: Mapping[str, str] | None) -> Context | None:
    return propagate.extract(dict(carrier)) if carrier else None
