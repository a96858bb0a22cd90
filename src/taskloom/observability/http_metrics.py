"""Plain ASGI middleware that counts and times every HTTP request, and writes its access log
line (ACCESS_LOG). The `path` label is the route template (`/api/workflows/{workflow_id}`) that
FastAPI matched, or one shared value for unmatched paths, so random URLs cannot grow the number
of series; query strings never count and are never logged (a download link's token is one).
Methods are client-chosen too: anything but the standard ones counts as `OTHER`."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
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


class _Series:
    """One (method, path, status)'s counter child and (method, path)'s histogram child, observed
    the way `Counter.inc(1)` and `Histogram.observe(d)` do it, minus their per-call checks: the
    value objects' `inc` are bound once, and the bucket is found by bisection (the first bound
    >= d, the same `le` rule; the last bound is +Inf). Works with the multiprocess values too."""

    __slots__ = ("_bounds", "_buckets", "_count", "_sum")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self._count: Callable[[float], None] = counter._value.inc
        self._sum: Callable[[float], None] = histogram._sum.inc
        self._buckets: list[Callable[[float], None]] = [b.inc for b in histogram._buckets]
        self._bounds: list[float] = list(histogram._upper_bounds)

    def observe(self, duration: float) -> None:
        self._count(1)
        self._sum(duration)
        self._buckets[bisect_left(self._bounds, duration)](1)


class _PublicSeries:
    """The same through the public API (a prometheus_client whose internals differ)."""

    __slots__ = ("_counter", "_histogram")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self._counter, self._histogram = counter, histogram

    def observe(self, duration: float) -> None:
        self._counter.inc()
        self._histogram.observe(duration)


def _series(method: str, path: str, status: int) -> _Series | _PublicSeries:
    counter = HTTP_REQUESTS.labels(method, path, str(status))
    histogram = HTTP_DURATION.labels(method, path)
    try:
        return _Series(counter, histogram)
    except AttributeError:
        return _PublicSeries(counter, histogram)


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, *, log_requests: bool = True) -> None:
        self.app = app
        self.log_requests = log_requests
        # The labelled children, cached: `labels()` costs more than the observation itself.
        self._series: dict[tuple[str, str, int], _Series | _PublicSeries] = {}

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
            ended = time.perf_counter()
            duration = ended - started
            route = scope.get("route")
            path = getattr(route, "path", None) or UNMATCHED_PATH
            method = scope["method"]
            if method not in METHODS:
                method = "OTHER"
            key = (method, path, status)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _series(method, path, status)
            series.observe(duration)
            REQUEST_WINDOW.observe(duration, status >= 500, ended)
            if self.log_requests:
                access_log.info(
                    "request",
                    method=method,
                    path=path,
                    status=status,
                    duration_ms=round(duration * 1000, 2),
                )
