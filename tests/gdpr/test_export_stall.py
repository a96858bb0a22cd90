"""Data exports whose clients stop reading cannot lock anyone out: they stream from a small pool
of their own (sign-in's pool is never theirs), more at once than it holds are turned away with
503 and Retry-After, and a stalled one is abandoned at its per-chunk deadline, its snapshot and
connection released. Against a real API process with raw sockets that never read: an in-process
ASGI client buffers the whole body, so it would never stall."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from taskloom.config import Settings
from taskloom.db.engine import Database, create_database
from taskloom.gdpr import export
from taskloom.runtime import Runtime
from tests.cli_support import deployment_env, serve_api
from tests.factories import Account, register
from tests.servers import free_port

STALLED = 6  # more than the export pool (2) and than sign-in's pool (2 + 2 overflow)
SEND_DEADLINE = 4


async def _seed_large_account(runtime: Runtime, person: Account, rows: int) -> None:
    """About `rows` KiB of executions: far more than the socket buffers between the server
    and a client that does not read."""
    async with runtime.database.system_engine.begin() as conn:
        workflow_id = uuid.uuid4()
        await conn.execute(
            text(
                "insert into workflows (id, org_id, name, definition, created_by) "
                "values (:w, :o, 'bulk', '{\"steps\": []}', :u)"
            ),
            {"w": workflow_id, "o": person.org_id, "u": person.user_id},
        )
        await conn.execute(
            text(
                "insert into workflow_executions (id, org_id, workflow_id, workflow_version, "
                "definition, triggered_by, status, input) "
                "select gen_random_uuid(), :o, :w, 1, '{}', :u, 'succeeded', "
                "jsonb_build_object('n', g, 'pad', repeat('x', 1000)) "
                "from generate_series(1, :n) g"
            ),
            {"o": person.org_id, "w": workflow_id, "u": person.user_id, "n": rows},
        )


def _start_export(port: int, token: str) -> socket.socket:
    """An export request from a client with a tiny receive window that will stop reading."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /api/user/data-export HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


def _answer(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """Status, headers and, for an error, its body; of a 200 the client reads no further."""
    sock.settimeout(15)
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(2048)
    head, body = received.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(2048)
    return status, head.lower(), body


async def _backends(database: Database) -> list[str]:
    """The states of export connections in use (a snapshot streaming or waiting)."""
    async with database.system_engine.connect() as conn:
        states = await conn.scalars(
            text(
                "select state from pg_stat_activity where application_name = 'taskloom-export' "
                "and datname = current_database() and state <> 'idle'"  # idle: in the pool
            )
        )
        return list(states)


async def _until(check: Callable[[], Awaitable[bool]], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.25)
    return False


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    port = free_port()
    log = tmp_path / "api.log"
    server = serve_api(
        deployment_env(
            settings,
            GDPR_EXPORT_MAX_PER_HOUR="100",
            GDPR_EXPORT_POOL_SIZE="2",
            GDPR_EXPORT_CHUNK_SEND_TIMEOUT_SECONDS=str(SEND_DEADLINE),
        ),
        port,
        log,
    )
    try:
        yield f"http://127.0.0.1:{port}", port, log
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except Exception:
            server.kill()
            raise


async def test_sign_in_answers_while_more_exports_stall_than_any_pool_holds(
    api: tuple[str, int, Path], runtime: Runtime
) -> None:
    base, port, log = api
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        person = await register(client, label="hoarder", organization_name="Hoarder Org")
        await _seed_large_account(runtime, person, rows=20_000)
        sockets = [_start_export(port, person.access_token) for _ in range(STALLED)]
        try:
            answers = [await asyncio.to_thread(_answer, sock) for sock in sockets]
            statuses = sorted(status for status, _, _ in answers)
            # The export pool streams two; the others are turned away at once, not queued.
            assert statuses == [200, 200] + [503] * (STALLED - 2), statuses
            for status, head, body in answers:
                if status == 503:
                    assert b"retry-after: " + str(SEND_DEADLINE).encode() in head
                    assert json.loads(body)["error"]["code"] == "exports_busy"

            async def stalled() -> bool:
                return (await _backends(runtime.database)).count("idle in transaction") == 2

            assert await _until(stalled, 10), await _backends(runtime.database)

            started = time.monotonic()
            signed_in = await client.post(
                "/auth/login", json={"email": person.email, "password": person.password}
            )
            took = time.monotonic() - started
            assert signed_in.status_code == 200, signed_in.text
            assert took < 5, f"sign-in took {took:.1f} s while exports stalled"

            async def released() -> bool:
                states = await _backends(runtime.database)
                return not {"active", "idle in transaction"} & set(states)

            # Abandoned at the per-chunk deadline: the snapshots end, the connections go back.
            within = SEND_DEADLINE + 10
            assert await _until(released, within), await _backends(runtime.database)
            assert "export_abandoned" in log.read_text()
            # ...and the freed slots serve the next export, read to its end.
            other = await register(client, label="patient", organization_name="Patient Org")
            again = await client.get("/api/user/data-export", headers=other.headers)
            assert again.status_code == 200, again.text
            assert again.json()["tables"]["users"][0]["email"] == other.email
        finally:
            for sock in sockets:
                sock.close()


async def test_an_export_connection_has_server_side_deadlines(settings: Settings) -> None:
    """The backstops when no HTTP client is involved (the CLI, the worker's ZIP): statements
    are bounded, and a snapshot left idle is ended by PostgreSQL itself."""
    bounded = settings.model_copy(
        update={
            "gdpr_export_statement_timeout_seconds": 1.5,
            "gdpr_export_idle_in_transaction_timeout_seconds": 1.0,
        }
    )
    database = create_database(bounded)
    try:
        async with database.export_engine.connect() as conn:
            assert (await conn.scalar(text("show statement_timeout"))) == "1500ms"
            with pytest.raises(DBAPIError, match="statement timeout"):
                await conn.execute(text("select pg_sleep(3)"))
        document = export.json_document(database, uuid.uuid4(), datetime.now(UTC))
        assert await anext(document) == b""  # an export connection is taken
        # Nobody's export: the whole document in one chunk, the snapshot open until the end.
        assert json.loads(await anext(document))["tables"]["users"] == []
        assert await _backends(database) == ["idle in transaction"]
        await asyncio.sleep(2.5)
        assert await _backends(database) == []  # PostgreSQL ended the session
        with pytest.raises(DBAPIError):
            await anext(document)
        assert database.export_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await database.dispose()


async def test_an_export_whose_client_hangs_up_releases_its_connection_at_once(
    api: tuple[str, int, Path], runtime: Runtime
) -> None:
    base, port, _ = api
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        person = await register(client, label="leaver", organization_name="Leaver Org")
        await _seed_large_account(runtime, person, rows=20_000)
    sock = _start_export(port, person.access_token)
    try:
        status, _, _ = await asyncio.to_thread(_answer, sock)
        assert status == 200

        async def streaming() -> bool:
            return len(await _backends(runtime.database)) == 1

        assert await _until(streaming, 10)
    finally:
        sock.close()

    async def released() -> bool:
        return await _backends(runtime.database) == []

    started = time.monotonic()
    assert await _until(released, SEND_DEADLINE + 10), await _backends(runtime.database)
    assert time.monotonic() - started < SEND_DEADLINE / 2  # not the deadline: the hang-up
