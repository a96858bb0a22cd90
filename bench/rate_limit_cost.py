"""The CPU one API rate-limit check costs a request: the keyed hash of an API key (or a session
key), the GCRA script's round trip to Redis, and the two header fields, measured in this process
(time.process_time) and in Redis (INFO commandstats). Needs only Redis.

    .venv/bin/python bench/rate_limit_cost.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
import uuid

from taskloom.auth import api_limits, ratelimit
from taskloom.config import Settings
from taskloom.redis import Keys, create_redis, purge_matching


async def measure(redis_url: str, requests: int) -> dict[str, float]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, redis_url=redis_url, redis_key_prefix=f"ratecost-{secrets.token_hex(4)}:"
    )
    keys = Keys(settings.key_prefix)
    redis = create_redis(settings, purpose="bench")
    rate = ratelimit.Rate(name="reads", quota=10**9, window_seconds=60)
    token = "tlk_" + secrets.token_hex(6) + "_" + secrets.token_urlsafe(32)
    session = uuid.uuid4()
    try:
        for _ in range(200):  # warm up: the script cached by Redis, connections open
            await ratelimit.take(redis=redis, key=keys("warm"), rate=rate)
        await redis.config_resetstat()
        cpu, wall = time.process_time(), time.perf_counter()
        for n in range(requests):
            if n % 2:
                key = ratelimit.api_key_key(settings=settings, keys=keys, rate="reads", token=token)
            else:
                key = ratelimit.session_key(keys=keys, rate="reads", session_id=session)
            allowance = await ratelimit.take(redis=redis, key=key, rate=rate)
            api_limits.headers({"reads": allowance})
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        stats = await redis.info("commandstats")
        script = stats.get("cmdstat_evalsha", {})
        return {
            "requests": requests,
            "process_cpu_us_per_check": round(cpu / requests * 1e6, 1),
            "wall_us_per_check": round(wall / requests * 1e6, 1),
            "redis_cpu_us_per_check": float(script.get("usec_per_call", 0.0)),
        }
    finally:
        await purge_matching(redis, keys.pattern)
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    print(asyncio.run(measure(redis_url, args.requests)))


if __name__ == "__main__":
    main()
