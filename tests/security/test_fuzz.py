"""Fuzzing: schemathesis against a real `taskloom api`, signed in as an organization owner with
one of each resource. No input, valid or not, makes an operation answer 5xx, and every response
is one the OpenAPI schema documents: status code, Content-Type, headers and body.

The harness is bench/fuzz.py's (its docstring says whom each operation is sent as, and why the
checks are the ones they are); `python bench/fuzz.py` is the long run. FUZZ_EXAMPLES caps the
cases per operation and phase (default 20: about a minute on 2 cores); FUZZ_SEED replays a run.

The deployment is a fresh one, not the session's: the fuzzer leaves instance-wide flags, queued
executions and hundreds of accounts behind, which later tests must not see.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from bench.fuzz import api_env, fuzz, seed

from taskloom.config import Settings
from tests.cli_support import clean_env, serve_api
from tests.conftest import fresh_deployment
from tests.servers import free_port

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
SEED = int(os.environ["FUZZ_SEED"]) if os.environ.get("FUZZ_SEED") else None


@pytest.fixture
async def deployment(pg_server_url: str, redis_url: str) -> AsyncIterator[Settings]:
    async with fresh_deployment(pg_server_url, redis_url, label="fuzz") as settings:
        yield settings


@pytest.fixture
def api(deployment: Settings, tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """(base URL, environment, log) of a `taskloom api` process on the fresh deployment."""
    env = clean_env(
        **api_env(
            database_url=deployment.database_url or "",
            role=deployment.database_app_role,
            redis_url=deployment.redis_url or "",
            prefix=deployment.key_prefix,
        )
    )
    port, log = free_port(), tmp_path / "api.log"
    server = serve_api(env, port, log)
    try:
        yield f"http://127.0.0.1:{port}", env, log
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_no_input_gets_a_5xx_or_a_response_the_schema_does_not_document(
    api: tuple[str, dict[str, str], Path],
) -> None:
    base_url, env, log = api
    report = fuzz(base_url, seed(base_url, env), examples=EXAMPLES, seed=SEED, server_log=log)
    print(report.render())  # pytest shows it under "Captured stdout call" when the test fails
    assert report.cases >= len(report.operations)
    assert not report.findings, f"{len(report.findings)} distinct failures, listed above"
    assert not report.errors, report.errors
