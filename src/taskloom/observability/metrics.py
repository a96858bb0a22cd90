"""Every Prometheus metric of Taskloom, defined once here (docs/OBSERVABILITY.md lists them);
the code that observes an event records it, once.

HTTP SLIs (`http_error_rate`, `http_latency_p95_seconds`, `http_latency_p99_seconds`,
`slo_error_budget_remaining`) are computed at scrape time over a sliding window of recent
requests (SLI_WINDOW_SECONDS), not since the process started.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

# An API's latencies: 5 ms ... 10 s.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED_PATH = "<unmatched>"

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by method, route template and status code.",
    ["method", "path", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request duration by method and route template.",
    ["method", "path"],
    buckets=HTTP_BUCKETS,
)

# --- bounded label values --------------------------------------------------------------------
OTHER = "other"


class BoundedLabel:
    """Label values that tenants choose (tool names advertised by their MCP servers, breakers
    named after their connections) would grow the number of series without end: the first
    `limit` distinct values a process sees keep their name, every later one is `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._named: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._named:
            return value
        with self._lock:
            if len(self._named) < self.limit:
                self._named.add(value)
                return value
        return OTHER

    def forget(self, value: str) -> None:
        """Free the value's place (its series was removed)."""
        with self._lock:
            self._named.discard(value)


MAX_NAMED_TOOLS = 100  # per process, (provider, tool) pairs; docs/OBSERVABILITY.md
MAX_NAMED_BREAKERS = 100
TOOL_NAMES = BoundedLabel(MAX_NAMED_TOOLS)
BREAKER_NAMES = BoundedLabel(MAX_NAMED_BREAKERS)

# --- AI model calls and tool calls (recorded by the code that makes the call, once per call) ---
AI_REQUESTS = Counter("ai_requests_total", "AI model calls.", ["model", "category", "success"])
AI_DURATION = Histogram(
    "ai_request_duration_seconds",
    "AI model call duration.",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
AI_TOKENS = Counter("ai_tokens_total", "AI tokens by type (input/output).", ["model", "type"])
AI_COST = Counter("ai_cost_usd_total", "Estimated AI cost in US dollars.", ["model"])
TOOL_CALLS = Counter(
    "mcp_tool_calls_total",
    "Tool calls (MCP and built-in providers).",
    ["provider", "tool", "success"],
)
TOOL_DURATION = Histogram(
    "mcp_tool_call_duration_seconds",
    "Tool call duration.",
    ["provider", "tool"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
AGENT_ITERATIONS = Histogram(
    "agent_iterations",
    "Model turns an agent step took, observed once when its loop stops.",
    buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50),
)
AGENT_STOPS = Counter(
    "agent_stops_total",
    "Agent loops that stopped, by reason (final_answer|iteration_limit|budget|error).",
    ["reason"],
)
TOOL_CACHE = Counter(
    "tool_cache_requests_total",
    "Read-only tool calls answered from the Redis cache (hit) or by the provider (miss).",
    ["provider", "tool", "result"],
)
CIRCUIT_STATE = Gauge(
    "circuit_breaker_state",
    "Circuit breakers: 0 closed, 1 half-open, 2 open (name `other`: the worst of the breakers"
    " past the first 100 of a process).",
    ["name"],
    multiprocess_mode="max",
)
CIRCUIT_SHARING_DEGRADED = Gauge(
    "circuit_breaker_sharing_degraded",
    "1 while this process's circuit breakers decide on their own because Redis does not answer"
    " (BREAKER_SHARING=redis only).",
    multiprocess_mode="max",
)

# --- database pool -------------------------------------------------------------------------------
DB_POOL = Gauge(
    "db_pool_connections",
    "Database pool connections by engine (app, system, export) and state (in_use, idle, overflow).",
    ["engine", "state"],
    multiprocess_mode="livesum",
)

# --- queue ---------------------------------------------------------------------------------------
QUEUE_JOBS = Gauge(
    "queue_jobs",
    "Jobs by queue and state, read from Redis when /metrics is scraped (cached a few seconds).",
    ["queue", "state"],
    multiprocess_mode="mostrecent",
)
QUEUE_JOB_DURATION = Histogram(
    "queue_job_duration_seconds",
    "Time a worker spent on one job, by queue.",
    ["queue"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0),
)
QUEUE_STALLED = Counter("queue_jobs_stalled_total", "Jobs found stalled (their worker died).")
QUEUE_FAILED = Counter(
    "queue_jobs_failed_total", "Failed job attempts (each attempt, the last one included)."
)
QUEUE_LOCK_RENEWAL_FAILURES = Counter(
    "queue_lock_renewal_failures_total", "Job locks a worker could not renew."
)
QUEUE_EVENTS = Counter(
    "queue_events_total",
    "Other worker events: completed, error, handed_back (shutdown), deferred (per-org cap),"
    " database_unavailable (a job put back while PostgreSQL could not be reached).",
    ["event"],
)

# --- triggers ------------------------------------------------------------------------------------
TRIGGERS = Counter(
    "workflow_triggers_total",
    "Starts asked of triggers, by kind (api, schedule, webhook, event, retry) and result: started,"
    " duplicate (an idempotency key or delivery id answered with its first execution), skipped"
    " (a schedule's overlap or missed tick), queued (a tick waiting for its previous execution),"
    " failed (a tick's input did not render or conform, or the queue was full), rejected (a"
    " webhook or event delivery refused: verification, rate limit, input schema, queue full).",
    ["kind", "result"],
)
SCHEDULE_LAG = Histogram(
    "schedule_lag_seconds",
    "From a schedule tick's time to its execution being queued (its row committed and submitted).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0, 300.0),
)

EXECUTIONS_RUNNING = Gauge(
    "taskloom_worker_executions_running",
    "Executions this worker process is running now.",
    multiprocess_mode="livesum",
)
# Labelled so that it has no series until a worker's heartbeat sets one: an API process
# exports none, and `absent(...)` in TaskloomWorkersAbsent means "no worker reported". With
# PROMETHEUS_MULTIPROC_DIR a dead worker's last value stays ("max"), so staleness shows too.
WORKER_HEARTBEAT = Gauge(
    "taskloom_worker_heartbeat_timestamp_seconds",
    "Unix time of the last heartbeat of a worker process (worker processes only).",
    ["queue"],
    multiprocess_mode="max",
)


class RequestWindow(Collector):
    """Recent requests (time, duration, 5xx) for the SLI gauges; bounded in time and size."""

    def __init__(
        self,
        *,
        window_seconds: float = 300.0,
        max_requests: int = 200_000,
        availability_target: float = 0.999,
        latency_target_seconds: float = 0.3,
        latency_target_share: float = 0.95,
    ) -> None:
        self.window_seconds = window_seconds
        self.availability_target = availability_target
        self.latency_target_seconds = latency_target_seconds
        self.latency_target_share = latency_target_share
        # A preallocated ring (no allocation per request, so no garbage for the collector).
        self._capacity = max_requests
        self._times = array("d", bytes(8 * max_requests))
        self._durations = array("d", bytes(8 * max_requests))
        self._errors = bytearray(max_requests)
        self._next = 0
        self._filled = 0

    def observe(self, duration: float, server_error: bool, now: float | None = None) -> None:
        # The clock is time.perf_counter (monotonic): the middleware passes the end it measured.
        # No lock: one thread writes (the event loop's, where the middleware runs), and the
        # scrape's snapshot is a statistic: a slot read while half-written is one sample off.
        moment = now if now is not None else time.perf_counter()
        i = self._next
        self._times[i] = moment
        self._durations[i] = duration
        self._errors[i] = server_error
        i += 1
        self._next = 0 if i == self._capacity else i
        if self._filled < self._capacity:
            self._filled += 1

    def snapshot(self, now: float | None = None) -> tuple[list[float], int]:
        """Durations (sorted) and the 5xx count of the requests inside the window."""
        cutoff = (now if now is not None else time.perf_counter()) - self.window_seconds
        start = (self._next - self._filled) % self._capacity
        indexes = [(start + k) % self._capacity for k in range(self._filled)]
        recent = [i for i in indexes if self._times[i] >= cutoff]
        durations = sorted(self._durations[i] for i in recent)
        errors = sum(self._errors[i] for i in recent)
        return durations, errors

    def collect(self, now: float | None = None) -> Iterator[GaugeMetricFamily]:
        durations, errors = self.snapshot(now)
        total = len(durations)
        error_rate = errors / total if total else 0.0
        slow_share = (
            sum(1 for d in durations if d > self.latency_target_seconds) / total if total else 0.0
        )
        window = f" over the last {self.window_seconds:g} s"
        yield GaugeMetricFamily(
            "http_error_rate", "Share of HTTP responses that were 5xx" + window, value=error_rate
        )
        yield GaugeMetricFamily(
            "http_latency_p95_seconds",
            "95th percentile HTTP latency" + window,
            value=_quantile(durations, 0.95),
        )
        yield GaugeMetricFamily(
            "http_latency_p99_seconds",
            "99th percentile HTTP latency" + window,
            value=_quantile(durations, 0.99),
        )
        budget = GaugeMetricFamily(
            "slo_error_budget_remaining",
            "Share of the SLO's error budget left" + window + " (negative: overspent)",
            labels=["slo"],
        )
        budget.add_metric(["availability"], _remaining(error_rate, 1 - self.availability_target))
        budget.add_metric(["latency"], _remaining(slow_share, 1 - self.latency_target_share))
        yield budget


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile; 0 when the window is empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def _remaining(bad_share: float, allowed_share: float) -> float:
    return 1.0 - bad_share / allowed_share if allowed_share > 0 else 0.0


REQUEST_WINDOW = RequestWindow()
REGISTRY.register(REQUEST_WINDOW)


def configure_slos(
    *,
    window_seconds: float,
    availability_target: float,
    latency_target_seconds: float,
) -> None:
    """Apply the settings (SLI_WINDOW_SECONDS, SLO_*) to this process's window."""
    REQUEST_WINDOW.window_seconds = window_seconds
    REQUEST_WINDOW.availability_target = availability_target
    REQUEST_WINDOW.latency_target_seconds = latency_target_seconds
