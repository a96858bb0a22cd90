"""What Taskloom's HTTP metrics cost per request, against no metrics and against
prometheus-fastapi-instrumentator, in one run.

The three apps are identical FastAPI apps (one JSON route with a path parameter, the request id
handled by the outermost middleware) except for the metrics: Taskloom's outermost middleware
(observability/requests.py) without and with its metrics, and the instrumentator around the
former. Each is called directly through ASGI (no server,
no HTTP client: those would hide the difference), N requests per round, rounds interleaved.
Prints requests/s, CPU per request, p50/p99 latency, and the loss against no metrics (target:
<= 3 %, and faster than the instrumentator), by throughput, CPU per request and p50.

Usage: python bench/http_overhead.py [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator

from taskloom.observability.requests import ObservedRequests


def _base() -> FastAPI:
    app = FastAPI()

    @app.get("/api/items/{item_id}")
    async def item(item_id: str) -> dict[str, Any]:
        return {"id": item_id, "ok": True}

    return app


def none() -> FastAPI:
    app = _base()
    app.add_middleware(ObservedRequests, metrics=False)  # the request id only
    return app


def taskloom() -> FastAPI:
    app = _base()
    app.add_middleware(ObservedRequests, log_requests=False)  # metrics, no access log
    return app


def instrumentator() -> FastAPI:
    app = _base()
    Instrumentator(registry=CollectorRegistry()).instrument(app)
    app.add_middleware(ObservedRequests, metrics=False)
    return app


async def _one(app: FastAPI, path: str) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 5000),
        "server": ("bench", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    await app(scope, receive, send)


async def _round(app: FastAPI, requests: int) -> tuple[float, float, list[float]]:
    """Requests/s, CPU microseconds per request (this process: less disturbed than wall time
    by other processes on a shared machine), and the latencies."""
    latencies = []
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(requests):
        t = time.perf_counter()
        await _one(app, f"/api/items/{i}")
        latencies.append(time.perf_counter() - t)
    cpu_us = (time.process_time() - cpu) / requests * 1e6
    return requests / (time.perf_counter() - started), cpu_us, latencies


async def run(requests: int, rounds: int) -> dict[str, Any]:
    variants: dict[str, Callable[[], FastAPI]] = {
        "no_metrics": none,
        "taskloom": taskloom,
        "instrumentator": instrumentator,
    }
    apps = {name: build() for name, build in variants.items()}
    for app in apps.values():  # warm up: routing caches, first-use imports
        async with app.router.lifespan_context(app):
            await _round(app, 500)
    rates: dict[str, list[float]] = {name: [] for name in apps}
    cpus: dict[str, list[float]] = {name: [] for name in apps}
    latencies: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            rate, cpu_us, lat = await _round(app, requests)
            rates[name].append(rate)
            cpus[name].append(cpu_us)
            latencies[name] += lat
    result: dict[str, Any] = {"requests_per_round": requests, "rounds": rounds}
    for name in apps:
        ordered = sorted(latencies[name])
        result[name] = {
            "req_per_s": round(statistics.median(rates[name])),
            "cpu_us": round(min(cpus[name]), 2),  # the least disturbed round
            "p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
            "p99_us": round(ordered[int(len(ordered) * 0.99)] * 1e6, 1),
        }
    base = result["no_metrics"]["req_per_s"]
    result["taskloom_loss"] = round(1 - result["taskloom"]["req_per_s"] / base, 4)
    # The same as CPU per request, and by p50 latency: three views of one cost.
    base_cpu, base_p50 = result["no_metrics"]["cpu_us"], result["no_metrics"]["p50_us"]
    result["taskloom_cpu_overhead"] = round(result["taskloom"]["cpu_us"] / base_cpu - 1, 4)
    result["taskloom_p50_overhead"] = round(result["taskloom"]["p50_us"] / base_p50 - 1, 4)
    result["instrumentator_loss"] = round(1 - result["instrumentator"]["req_per_s"] / base, 4)
    result["taskloom_vs_instrumentator"] = round(
        result["taskloom"]["req_per_s"] / result["instrumentator"]["req_per_s"], 3
    )
    alone = await _middleware_alone(requests, rounds)
    result["middleware_alone_us"] = alone
    result["middleware_share"] = round(alone / base_cpu, 4)
    return result


async def _trivial(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _middleware_alone(requests: int, rounds: int) -> float:
    """CPU microseconds the metrics add to the outermost middleware around an ASGI app that
    does nothing: their own cost, without FastAPI's noise around it (best round of each,
    interleaved)."""
    bare = ObservedRequests(_trivial, metrics=False)
    wrapped = ObservedRequests(_trivial, log_requests=False)
    best = {"bare": math.inf, "wrapped": math.inf}
    for _ in range(rounds):
        for name, app in (("bare", bare), ("wrapped", wrapped)):
            _, cpu_us, _ = await _round(app, requests)  # type: ignore[arg-type]
            best[name] = min(best[name], cpu_us)
    return round(best["wrapped"] - best["bare"], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    result = asyncio.run(run(args.requests, args.rounds))
    for name in ("no_metrics", "taskloom", "instrumentator"):
        row = result[name]
        latency = f"p50 {row['p50_us']:>7} µs  p99 {row['p99_us']:>7} µs"
        print(f"{name:<15} {row['req_per_s']:>8} req/s  {row['cpu_us']:>7} µs CPU  {latency}")
    print(
        f"loss vs no metrics: taskloom {result['taskloom_loss']:.1%}, "
        f"instrumentator {result['instrumentator_loss']:.1%}; "
        f"taskloom / instrumentator = {result['taskloom_vs_instrumentator']}"
    )
    print(
        f"taskloom's cost by CPU per request {result['taskloom_cpu_overhead']:.1%}, "
        f"by p50 latency {result['taskloom_p50_overhead']:.1%}; the middleware alone "
        f"{result['middleware_alone_us']} µs, {result['middleware_share']:.1%} of the bare endpoint"
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
