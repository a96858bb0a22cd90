"""`taskloom user set-password`: an operator sets a person's password (prompted twice without
echo on a terminal, or one line of stdin with --password-stdin); every session of the person
ends and the change is audited on the instance chain."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import select as sql_select

from taskloom.audit.models import AuditLog
from taskloom.config import Settings
from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from tests.cli_support import deployment_env, run_taskloom
from tests.factories import PASSWORD, login, register

NEW_PASSWORD = "set by the operator, long enough"


async def test_set_password_from_stdin_signs_the_person_out_everywhere_and_is_audited(
    settings: Settings, runtime: Runtime, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    person = await register(client, label="cliset")
    other = await login(client, person.email)

    result = await run_taskloom(
        "user", "set-password", "--email", person.email.upper(), "--password-stdin",
        env=deployment_env(settings), cwd=tmp_path, stdin=NEW_PASSWORD + "\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 session(s) signed out" in result.stderr
    assert NEW_PASSWORD not in result.stdout + result.stderr

    for account in (person, other):
        assert (await client.get("/auth/me", headers=account.headers)).status_code == 401
        refreshed = await client.post(
            "/auth/refresh", json={"refresh_token": account.refresh_token}
        )
        assert refreshed.status_code == 401
    old = await client.post("/auth/login", json={"email": person.email, "password": PASSWORD})
    assert old.status_code == 401
    new = await client.post("/auth/login", json={"email": person.email, "password": NEW_PASSWORD})
    assert new.status_code == 200, new.text

    async with system_transaction(runtime.database) as db:
        events = (
            (
                await db.execute(
                    sql_select(AuditLog).where(
                        AuditLog.action == "auth.password_change",
                        AuditLog.resource_id == str(person.user_id),
                    )
                )
            )
            .scalars()
            .all()
        )
    assert [(e.org_id, e.success, e.details) for e in events] == [
        (None, True, {"source": "cli", "sessions_revoked": 2})
    ]


async def test_set_password_refuses_an_unknown_email_and_a_weak_password(
    settings: Settings, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    env = deployment_env(settings)
    unknown = await run_taskloom(
        "user", "set-password", "--email", "nobody@example.test", "--password-stdin",
        env=env, cwd=tmp_path, stdin=NEW_PASSWORD + "\n",
    )  # fmt: skip
    assert unknown.returncode == 1
    assert "no account" in unknown.stderr
    person = await register(client, label="cliweak")
    weak = await run_taskloom(
        "user", "set-password", "--email", person.email, "--password-stdin",
        env=env, cwd=tmp_path, stdin="short\n",
    )  # fmt: skip
    assert weak.returncode == 1
    assert "at least" in weak.stderr
    kept = await client.post("/auth/login", json={"email": person.email, "password": PASSWORD})
    assert kept.status_code == 200


def _drive_prompts(args: list[str], env: dict[str, str], answers: list[str]) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, typing each answer after the next prompt; returns the
    exit code and everything the terminal showed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "taskloom", *args],
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,  # the pty becomes its controlling terminal (getpass reads it)
    )
    os.close(follower)
    shown = b""
    pending, answered = list(answers), 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
                # Answer each prompt once, after its last space: click shows "New password:",
                # then getpass flushes what was typed ahead and writes " " before it reads.
                if pending and shown[answered:].endswith(b": "):
                    os.write(leader, pending.pop(0).encode() + b"\n")
                    answered = len(shown)
            elif process.poll() is not None:
                break
        return process.wait(timeout=10), shown.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)


async def test_set_password_prompts_twice_without_echo(
    settings: Settings, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    person = await register(client, label="cliprompt")
    env = {**deployment_env(settings), "TERM": "dumb"}
    args = ["user", "set-password", "--email", person.email]
    code, shown = await asyncio.to_thread(
        _drive_prompts, args, env, [NEW_PASSWORD, "a different one", NEW_PASSWORD, NEW_PASSWORD]
    )
    assert code == 0, shown
    assert shown.count("New password") >= 2, shown  # asked again after the mismatch
    assert "Repeat for confirmation" in shown
    assert NEW_PASSWORD not in shown  # never echoed
    new = await client.post("/auth/login", json={"email": person.email, "password": NEW_PASSWORD})
    assert new.status_code == 200, new.text
