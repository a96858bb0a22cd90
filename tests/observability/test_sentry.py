"""With SENTRY_DSN set, a failed start-up reaches Sentry (a local server speaking its ingest
protocol) with its cause and without secrets; unset, nothing is sent."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from taskloom.config import Settings
from tests.cli_support import clean_env, run_taskloom


@pytest.fixture
def ingest() -> Iterator[tuple[list[bytes], int]]:
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path.startswith("/api/1/"):
                received.append(body)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield received, server.server_address[1]
    server.shutdown()


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return clean_env(
        TASKLOOM_ENV="test",
        DATABASE_URL=settings.database_url or "",
        DATABASE_APP_ROLE=settings.database_app_role,
        REDIS_URL="redis://:not-a-real-Pa55@127.0.0.1:1/0",  # nothing listens there
        **extra,
    )


async def test_a_failed_start_up_is_reported_without_secrets(
    ingest: tuple[list[bytes], int], settings: Settings, tmp_path: Path
) -> None:
    received, port = ingest
    dsn = f"http://publickey@127.0.0.1:{port}/1"
    result = await run_taskloom("api", env=_env(settings, SENTRY_DSN=dsn), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "connection refused" in result.stderr
    sent = b"".join(received).decode(errors="replace")
    assert "RedisConnectError" in sent
    assert "connection refused" in sent
    assert "not-a-real-Pa55" not in sent


async def test_without_a_dsn_nothing_is_sent(
    ingest: tuple[list[bytes], int], settings: Settings, tmp_path: Path
) -> None:
    received, _ = ingest
    result = await run_taskloom("api", env=_env(settings), cwd=tmp_path)
    assert result.returncode == 1
    assert received == []
