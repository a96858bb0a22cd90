"""Prometheus metrics of this process. The metrics issue exposes them at /metrics; every
module records into the objects defined here, so names live in one place."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

QUEUE_EVENTS = Counter(
    "taskloom_queue_events_total",
    "Worker events of the orchestration queue: completed, failed (each failed attempt), "
    "stalled, lock_renewal_failed, error, handed_back, deferred.",
    ["event"],
)
EXECUTIONS_RUNNING = Gauge(
    "taskloom_worker_executions_running",
    "Executions this worker process is running now.",
)
