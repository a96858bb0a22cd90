"""Operators handle GDPR requests from the command line; an export's memory does not grow with
the size of the account."""

from __future__ import annotations

import json
import signal
import uuid
import zipfile
from pathlib import Path

import httpx
import psutil
from sqlalchemy import text

from taskloom.config import Settings
from taskloom.runtime import Runtime
from tests.cli_support import deployment_env, run_taskloom, serve_api
from tests.factories import register
from tests.servers import free_port


async def test_cli_exports_then_erases_a_person(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    person = await register(client, label="cli-subject", organization_name="Cli Subject Org")
    out = tmp_path / "export.zip"
    exported = await run_taskloom(
        "gdpr",
        "export",
        "--email",
        person.email,
        "--out",
        str(out),
        env=deployment_env(settings),
        cwd=tmp_path,
    )
    assert exported.returncode == 0, exported.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    with zipfile.ZipFile(out) as archive:
        users = json.loads(archive.read("tables/users.json"))
    assert [u["email"] for u in users] == [person.email]

    erased = await run_taskloom(
        "gdpr",
        "delete",
        "--email",
        person.email,
        "--yes",
        env=deployment_env(settings),
        cwd=tmp_path,
    )
    assert erased.returncode == 0, erased.stderr
    assert "erased-" in erased.stderr
    signed_in = await client.post(
        "/auth/login", json={"email": person.email, "password": person.password}
    )
    assert signed_in.status_code == 401
    again = await run_taskloom(
        "gdpr",
        "delete",
        "--email",
        person.email,
        "--yes",
        env=deployment_env(settings),
        cwd=tmp_path,
    )
    assert again.returncode == 1
    assert "no account" in again.stderr


async def _seed_executions(runtime: Runtime, org_id: uuid.UUID, user_id: uuid.UUID, n: int) -> None:
    """n executions started by the user (bulk insert through the privileged role)."""
    async with runtime.database.system_engine.begin() as conn:
        workflow_id = uuid.uuid4()
        await conn.execute(
            text(
                "insert into workflows (id, org_id, name, definition, created_by) "
                "values (:w, :o, 'bulk', '{\"steps\": []}', :u)"
            ),
            {"w": workflow_id, "o": org_id, "u": user_id},
        )
        await conn.execute(
            text(
                "insert into workflow_executions (id, org_id, workflow_id, workflow_version, "
                "definition, triggered_by, status, input) "
                "select gen_random_uuid(), :o, :w, 1, '{}', :u, 'succeeded', "
                "jsonb_build_object('n', g, 'pad', repeat('x', 200)) "
                "from generate_series(1, :n) g"
            ),
            {"o": org_id, "w": workflow_id, "u": user_id, "n": n},
        )


async def test_export_memory_stays_flat_as_the_account_grows(
    settings: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    """Peak RSS of a real API process while streaming a 1,000-row and a 100,000-row export."""
    port = free_port()
    server = serve_api(deployment_env(settings), port, tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        peaks = {}
        async with httpx.AsyncClient(base_url=base, timeout=120) as api:
            for rows in (1_000, 100_000):
                person = await register(api, label=f"big{rows}", organization_name="Big Org")
                await _seed_executions(runtime, person.org_id, person.user_id, rows)
                process = psutil.Process(server.pid)
                baseline, peak, size = process.memory_info().rss, 0, 0
                async with api.stream(
                    "GET", "/api/user/data-export", headers=person.headers
                ) as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        peak = max(peak, process.memory_info().rss)
                peaks[rows] = (peak - baseline, size)
        growth_small, size_small = peaks[1_000]
        growth_big, size_big = peaks[100_000]
        print(
            f"export RSS growth: 1k rows {growth_small >> 20} MiB ({size_small >> 20} MiB out), "
            f"100k rows {growth_big >> 20} MiB ({size_big >> 20} MiB out)"
        )
        assert size_big > 20 * 2**20  # the big export really is big
        assert growth_big < 40 * 2**20  # ...and the server did not hold it in memory
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
