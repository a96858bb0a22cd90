"""The middleware's cached series observe exactly what `Counter.inc()` and
`Histogram.observe()` would: the same count, sum and buckets (`le` is inclusive), both the
in-place one (this process's values) and the one writing through the values' `inc`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from taskloom.observability.http_metrics import _InPlaceSeries, _PublicSeries, _Series
from taskloom.observability.metrics import HTTP_BUCKETS

# Bounds exactly, just above and below them, zero, and beyond the last bound (+Inf).
DURATIONS = [0.0, 0.005, 0.0050001, 0.0049999, 0.3, 0.25, 10.0, 10.5, 2.5, 0.1]


def _samples(
    series_class: type[_InPlaceSeries] | type[_Series] | type[_PublicSeries],
) -> dict[tuple, float]:
    registry = CollectorRegistry()
    counter = Counter("req", "r", ["method", "path", "status"], registry=registry)
    histogram = Histogram("dur", "d", ["method", "path"], buckets=HTTP_BUCKETS, registry=registry)
    series = series_class(counter.labels("GET", "/x", "200"), histogram.labels("GET", "/x"))
    for duration in DURATIONS:
        series.observe(duration)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_the_fast_series_matches_the_public_api_sample_for_sample() -> None:
    fast, public = _samples(_Series), _samples(_PublicSeries)
    assert fast == public
    assert _samples(_InPlaceSeries) == public
    assert fast[("dur_bucket", (("le", "0.005"), ("method", "GET"), ("path", "/x")))] == 3
    assert fast[("dur_bucket", (("le", "+Inf"), ("method", "GET"), ("path", "/x")))] == 10
    assert fast[("req_total", (("method", "GET"), ("path", "/x"), ("status", "200")))] == 10
