"""GET /metrics: the Prometheus exposition of this process (or, with PROMETHEUS_MULTIPROC_DIR
set, of every process sharing that directory). Optionally behind a bearer token."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import CollectorRegistry

from taskloom.errors import Unauthorized
from taskloom.observability.metrics import REQUEST_WINDOW

router = APIRouter(tags=["observability"])


def _registry(request: Request) -> CollectorRegistry:
    directory = request.app.state.runtime.settings.prometheus_multiproc_dir
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(REQUEST_WINDOW)  # this process's SLI window (see docs/OBSERVABILITY.md)
    return registry


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    token = request.app.state.runtime.settings.metrics_token
    if token is not None:
        sent = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise Unauthorized("a valid metrics token is required", code="invalid_token")
    return Response(generate_latest(_registry(request)), media_type=CONTENT_TYPE_LATEST)
