"""Plain ASGI middleware that counts and times every HTTP request, and writes its access log
line (ACCESS_LOG). The `path` label is the route template (`/api/workflows/{workflow_id}`) that
FastAPI matched, or one shared value for unmatched paths, so random URLs cannot grow the number
of series; query strings never count and are never logged (a download link's token is one).
Methods are client-chosen too: anything but the standard ones counts as `OTHER`."""

from __future__ import annotations

import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskloom.observability.metrics import (
    HTTP_DURATION,
    HTTP_REQUESTS,
    REQUEST_WINDOW,
    UNMATCHED_PATH,
)

access_log = structlog.get_logger("taskloom.access")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, *, log_requests: bool = True) -> None:
        self.app = app
        self.log_requests = log_requests
        # The labelled children, cached: `labels()` costs more than the observation itself.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app dies before answering, the client sees a 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            duration = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", None) or UNMATCHED_PATH
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            key = (method, path, status)
            children = self._children.get(key)
            if children is None:
                children = (
                    HTTP_REQUESTS.labels(method, path, str(status)),
                    HTTP_DURATION.labels(method, path),
                )
                self._children[key] = children
            children[0].inc()
            children[1].observe(duration)
            REQUEST_WINDOW.observe(duration, status >= 500)
            if self.log_requests:
                access_log.info(
                    "request",
                    method=method,
                    path=path,
                    status=status,
                    duration_ms=round(duration * 1000, 2),
                )
