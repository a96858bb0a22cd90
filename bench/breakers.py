"""What sharing circuit breakers through Redis costs and what it saves (BREAKER_SHARING=redis,
docs/SCALING.md "Many hosts"). Needs only Redis.

1. Cost: guarded calls per second (`before_call` + `record_success` around a no-op call) on a
   closed breaker, per process vs shared (BREAKER_SHARED_CACHE_SECONDS 1, the default, and 0:
   every call asks Redis), one caller at a time and 32 at once, with the ratio to per process.
2. Saving: W "workers" (registries with their own Redis clients) keep calling a provider that
   always fails, for a few seconds; the calls that reach the provider, per process vs shared.

    .venv/bin/python bench/breakers.py [--calls 20000] [--workers 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
import uuid

from redis.asyncio import Redis

from taskloom.breakers import Breakers, CircuitOpen
from taskloom.config import Settings
from taskloom.redis import Keys, create_redis, purge_matching
from taskloom.shared_breakers import RedisBreakers


def _redis(redis_url: str) -> Redis:
    settings = Settings(_env_file=None, redis_url=redis_url)  # type: ignore[call-arg]
    return create_redis(settings, purpose="bench")


async def _guarded_calls(breakers: Breakers, calls: int, concurrency: int) -> float:
    """Guarded no-op calls per second on one closed breaker."""
    breaker = breakers.get(f"tool:{uuid.uuid4()}", failure_threshold=5, reset_seconds=30)
    per_task = calls // concurrency

    async def caller() -> None:
        for _ in range(per_task):
            await breaker.before_call()
            await asyncio.sleep(0)  # the call
            await breaker.record_success()

    await asyncio.gather(*(caller() for _ in range(concurrency)))  # warm up
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return per_task * concurrency / (time.perf_counter() - started)


async def cost(redis_url: str, keys: Keys, calls: int) -> dict[str, float]:
    redis = _redis(redis_url)
    result: dict[str, float] = {}
    try:
        modes = {
            "process": Breakers(),
            "redis_cache_1s": Breakers(RedisBreakers(redis, keys, cache_seconds=1.0)),
            "redis_cache_0": Breakers(RedisBreakers(redis, keys, cache_seconds=0.0)),
        }
        for concurrency in (1, 32):
            for mode, breakers in modes.items():
                rate = await _guarded_calls(breakers, calls, concurrency)
                result[f"{mode}_c{concurrency}_calls_per_s"] = round(rate)
            base = result[f"process_c{concurrency}_calls_per_s"]
            for mode in ("redis_cache_1s", "redis_cache_0"):
                ratio = result[f"{mode}_c{concurrency}_calls_per_s"] / base
                result[f"ratio_{mode}_c{concurrency}"] = round(ratio, 3)
    finally:
        await redis.aclose()
    return result


async def failing_provider_calls(
    redis_url: str, keys: Keys, *, workers: int, seconds: float, shared: bool
) -> int:
    """Calls that reach an always-failing provider from `workers` processes in `seconds`
    (threshold 5, reset 0.5 s; a refused caller retries 10 ms later)."""
    clients = [_redis(redis_url) for _ in range(workers)]
    name = f"ai:{uuid.uuid4()}"
    reached = 0

    async def provider() -> None:
        nonlocal reached
        reached += 1
        await asyncio.sleep(0.002)
        raise ConnectionError("provider down")

    async def worker(breakers: Breakers) -> None:
        breaker = breakers.get(name, failure_threshold=5, reset_seconds=0.5)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                await breaker.call(provider)
            except CircuitOpen:
                await asyncio.sleep(0.01)
            except ConnectionError:
                pass

    try:
        registries = [
            Breakers(RedisBreakers(client, keys) if shared else None) for client in clients
        ]
        await asyncio.gather(*(worker(r) for r in registries))
    finally:
        for client in clients:
            await client.aclose()
    return reached


async def measure(redis_url: str, calls: int, workers: int, seconds: float) -> dict[str, float]:
    keys = Keys(f"breakerbench-{secrets.token_hex(4)}:")
    try:
        result = await cost(redis_url, keys, calls)
        for shared in (False, True):
            mode = "redis" if shared else "process"
            result[f"failing_provider_calls_{mode}"] = await failing_provider_calls(
                redis_url, keys, workers=workers, seconds=seconds, shared=shared
            )
        return result
    finally:
        redis = _redis(redis_url)
        await purge_matching(redis, keys.pattern)
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    result = asyncio.run(measure(redis_url, args.calls, args.workers, args.seconds))
    print(f"{'mode':<16} {'1 caller':>12} {'32 callers':>12}  (guarded calls/s, closed)")
    for mode in ("process", "redis_cache_1s", "redis_cache_0"):
        one, many = result[f"{mode}_c1_calls_per_s"], result[f"{mode}_c32_calls_per_s"]
        print(f"{mode:<16} {one:>12,.0f} {many:>12,.0f}")
    print(
        f"failing provider, {args.workers} workers, {args.seconds:g} s: "
        f"{result['failing_provider_calls_process']} calls per process, "
        f"{result['failing_provider_calls_redis']} shared"
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
