"""The command line: `taskloom up` on the embedded default, `user create`, `migrate`."""

from __future__ import annotations

import importlib.metadata
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from taskloom.config import Settings
from tests.cli_support import clean_env, run_taskloom
from tests.factories import unique_email
from tests.servers import free_port


def _processes_mentioning(path: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmdline:
            found.append(f"{proc.info['pid']}: {cmdline}")
    return found


def test_up_boots_on_the_embedded_default_and_stops_cleanly(tmp_path: Path) -> None:
    workdir = Path(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskloom", "up", "--port", str(port)],
        cwd=workdir,
        env=clean_env(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 90
        live = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert live is not None, "taskloom up did not answer within 90 s"
        assert live.status_code == 200
        assert live.json() == {"status": "ok"}

        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
        output.append(stdout)
        assert proc.returncode == 0, stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            output.append(proc.communicate()[0])
    text = "".join(output)
    assert "admin@taskloom.local" in text
    assert "event_loop=uvloop" in text  # the API serves on uvloop, as uvicorn alone would
    assert re.search(r"password:\s+\S{16,}", text), text
    assert (workdir / ".taskloom" / "pg").is_dir()
    time.sleep(0.5)
    assert _processes_mentioning(workdir) == []


async def test_user_create_makes_an_account_that_can_sign_in(
    settings: Settings, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    email, password = unique_email("cli"), "a long enough password"
    env = clean_env(
        DATABASE_URL=settings.database_url or "",
        DATABASE_APP_ROLE=settings.database_app_role,
        REDIS_URL=settings.redis_url or "",
        REDIS_KEY_PREFIX=settings.key_prefix,
        TASKLOOM_ENV="test",
    )
    create = ("user", "create", "--email", email, "--password", password)
    created = await run_taskloom(
        *create, "--name", "Cli User", "--org", "Cli Org", env=env, cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    assert email in created.stderr
    assert "Cli Org" in created.stderr
    signed_in = await client.post("/auth/login", json={"email": email, "password": password})
    assert signed_in.status_code == 200, signed_in.text
    orgs = await client.get(
        "/api/orgs", headers={"Authorization": f"Bearer {signed_in.json()['access_token']}"}
    )
    assert [(o["name"], o["role"]) for o in orgs.json()] == [("Cli Org", "owner")]

    again = await run_taskloom(*create, "--name", "Dup", env=env, cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists" in again.stderr

    migrated = await run_taskloom("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr


async def test_version_prints_the_installed_packages_version(tmp_path: Path) -> None:
    result = await run_taskloom("--version", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"taskloom {importlib.metadata.version('taskloom')}"
