"""Every HTTP request counted and timed, and its access log line (ACCESS_LOG), recorded by the
outermost middleware (observability/requests.py) once the request has been answered. The `path`
label is the route template (`/api/workflows/{workflow_id}`) that FastAPI matched, or one shared
value for unmatched paths, so random URLs cannot grow the number of series; query strings never
count and are never logged (a download link's token is one). Methods are client-chosen too:
anything but the standard ones counts as `OTHER`."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client.values import MutexValue
from starlette.types import Scope

from taskloom.observability.metrics import (
    HTTP_DURATION,
    HTTP_REQUESTS,
    REQUEST_WINDOW,
    UNMATCHED_PATH,
)

access_log = structlog.get_logger("taskloom.access")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _InPlaceSeries:
    """One (method, path, status)'s counter child and (method, path)'s histogram child, observed
    as `Counter.inc(1)` and `Histogram.observe(d)` would, for this process's own values
    (prometheus_client's MutexValue): incremented in place, without their per-call checks and
    locks. The bucket is found by bisection (the first bound >= d, the same `le` rule; the last
    bound is +Inf). Safe because one thread alone records HTTP requests, the event loop's (the
    middleware runs on it, and nothing else writes these metrics), so no increment can race
    another; a scrape reads each value whole."""

    __slots__ = ("_bounds", "_buckets", "_count", "_sum")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self._count, self._sum = counter._value, histogram._sum
        self._buckets: list[Any] = list(histogram._buckets)
        if any(type(v) is not MutexValue for v in (self._count, self._sum, *self._buckets)):
            raise TypeError("not this process's own values")
        self._bounds: list[float] = list(histogram._upper_bounds)

    def observe(self, duration: float) -> None:
        self._count._value += 1
        self._sum._value += duration
        self._buckets[bisect_left(self._bounds, duration)]._value += 1


class _Series:
    """The same through the values' own `inc` (bound once): multiprocess values (files shared
    by the API processes, PROMETHEUS_MULTIPROC_DIR), which must write through."""

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


Series = _InPlaceSeries | _Series | _PublicSeries


def _series(method: str, path: str, status: int) -> Series:
    counter = HTTP_REQUESTS.labels(method, path, str(status))
    histogram = HTTP_DURATION.labels(method, path)
    for kind in (_InPlaceSeries, _Series):
        try:
            return kind(counter, histogram)
        except (AttributeError, TypeError):
            continue
    return _PublicSeries(counter, histogram)


class HttpMetrics:
    """The request metrics (and access log) of one app."""

    def __init__(self, *, log_requests: bool = True) -> None:
        self.log_requests = log_requests
        # The labelled children, cached: `labels()` costs more than the observation itself.
        self._series: dict[tuple[str, str, int], Series] = {}

    def record(self, scope: Scope, status: int, duration: float, ended: float) -> None:
        """One answered request: `status` sent (500 if none was), `duration` seconds, ended
        at `ended` (time.perf_counter)."""
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
