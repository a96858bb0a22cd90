"""With SENTRY_DSN set, a failed start-up reaches Sentry (a local server speaking its ingest
protocol) with its cause and without secrets; unset, nothing is sent."""

from __future__ import annotations

import gzip
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from taskloom.config import Settings
from tests.cli_support import clean_env, deployment_env, run_taskloom, serve_api
from tests.conftest import fresh_deployment
from tests.factories import register
from tests.servers import free_port


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


async def test_an_unexpected_500_is_reported_with_its_route(
    ingest: tuple[list[bytes], int], pg_server_url: str, redis_url: str, tmp_path: Path
) -> None:
    """A real failure, not a patched one: the application role loses a privilege in a database
    of this test's own, so listing workflows fails inside PostgreSQL."""
    received, port = ingest
    async with fresh_deployment(pg_server_url, redis_url, label="sentry") as settings:
        role = settings.database_app_role
        env = deployment_env(settings, SENTRY_DSN=f"http://publickey@127.0.0.1:{port}/1")
        api_port = free_port()
        server = serve_api(env, api_port, tmp_path / "api.log")
        try:
            # (take a grant away once the API is up, so its start-up checks pass)
            broken = await asyncpg.connect(settings.database_url)
            await broken.execute(f'REVOKE SELECT ON workflows FROM "{role}"')
            await broken.close()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as api:
                person = await register(api, label="sentry", organization_name="Sentry Org")
                failed = await api.get(
                    "/api/workflows", headers={**person.headers, "X-Request-ID": "req-500-sentry"}
                )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "internal_error"
        # The 500 keeps the request's id: in the body, the header, the report and the log.
        assert failed.json()["error"]["request_id"] == "req-500-sentry"
        assert failed.headers["x-request-id"] == "req-500-sentry"
        log = (tmp_path / "api.log").read_text()
        assert log.count("unhandled_error") == 1
        assert "req-500-sentry" in log
        sent = b"".join(received).decode(errors="replace")
        assert "req-500-sentry" in sent
        assert "InsufficientPrivilege" in sent
        assert "/api/workflows" in sent  # the route tag
        assert person.email not in sent
