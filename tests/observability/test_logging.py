"""One log format: with LOG_JSON every line a real `taskloom api` writes to stderr is JSON,
uvicorn's and the other standard-library loggers' included, each with `timestamp`, `level`,
`logger` and `request_id`; each request has one access line with the route template, never the
query string."""

from __future__ import annotations

import io
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from taskloom.config import Settings
from taskloom.observability.logging import configure_logging
from tests.cli_support import deployment_env, serve_api
from tests.factories import register
from tests.servers import free_port


def _lines(log: Path) -> list[dict[str, Any]]:
    parsed = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
    return parsed


async def test_every_line_of_a_real_api_process_is_json_with_the_same_keys(
    settings: Settings, tmp_path: Path
) -> None:
    env = deployment_env(settings, LOG_JSON="true")
    port = free_port()
    log = tmp_path / "api.log"
    server = serve_api(env, port, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            person = await register(api, label="logs", organization_name="Logs Org")
            listed = await api.get(
                "/api/workflows?limit=5&token=secret-in-query",
                headers={**person.headers, "X-Request-ID": "req-access-log"},
            )
            assert listed.status_code == 200
            missing = await api.get(
                "/api/workflows/00000000-0000-0000-0000-000000000000", headers=person.headers
            )
            assert missing.status_code == 404
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    lines = _lines(log)
    for line in lines:
        assert {"timestamp", "level", "logger", "request_id", "event"} <= line.keys(), line
    loggers = {line["logger"] for line in lines}
    assert any(name.startswith("uvicorn") for name in loggers), loggers  # the standard library's
    assert "taskloom.access" in loggers

    access = [line for line in lines if line["logger"] == "taskloom.access"]
    listing = [line for line in access if line["request_id"] == "req-access-log"]
    assert len(listing) == 1
    assert listing[0]["method"] == "GET"
    assert listing[0]["path"] == "/api/workflows"
    assert listing[0]["status"] == 200
    assert listing[0]["duration_ms"] >= 0
    item = [line for line in access if line["status"] == 404]
    assert [line["path"] for line in item] == ["/api/workflows/{workflow_id}"]  # the template
    assert "secret-in-query" not in log.read_text()


def test_a_line_inside_a_span_carries_its_trace_and_span_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging(Settings(_env_file=None, log_json=True))  # type: ignore[call-arg]
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("work") as span:
            structlog.get_logger("taskloom.test").warning("inside", n=1)
            logging.getLogger("some.library").warning("inside too")
        structlog.get_logger("taskloom.test").warning("outside")
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
    context = span.get_span_context()
    inside, library, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    for line in (inside, library):
        assert line["trace_id"] == format(context.trace_id, "032x")
        assert line["span_id"] == format(context.span_id, "016x")
    assert library["logger"] == "some.library"
    assert "trace_id" not in outside
