"""A real PgBouncer (Debian's `pgbouncer`, 1.18: no prepared statements in transaction mode) in
`pool_mode = transaction` in front of the tests' PostgreSQL, on a free loopback port, with a
pool of two server connections per database and role, so client connections really do share
server connections. Any database of that server is reachable through it; a role logs in
without a password (`auth_type = trust`, the test server trusts its clients too), looked up
with `auth_query` as the URL's privileged user.

TEST_THROUGH_PGBOUNCER=1 puts the application role of every deployment the session makes
(tests/conftest.py's fresh_deployment) behind one of these, with DATABASE_PGBOUNCER=true."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.servers import free_port, missing_program

THROUGH_PGBOUNCER = os.environ.get("TEST_THROUGH_PGBOUNCER") == "1"


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found:
        return found
    missing_program("the PgBouncer tests need pgbouncer (apt-get install pgbouncer)")


@dataclass(frozen=True)
class PgBouncer:
    port: int
    log: Path

    def route(self, url: str) -> str:
        """`url` (a role and database on the tests' server) through this PgBouncer."""
        parsed = make_url(url).difference_update_query(["host", "port"])
        return parsed.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _server(pg_server_url: str) -> tuple[str, int]:
    """The host (or unix socket directory: libpq's `?host=` wins) and port of the server."""
    url = make_url(pg_server_url)
    queried = url.query.get("host")
    host = (queried[0] if isinstance(queried, tuple) else queried) or url.host or "127.0.0.1"
    return host, url.port or 5432


def pgbouncer_ini(
    pg_server_url: str, directory: Path, port: int, *, ignore_startup_parameters: str = ""
) -> str:
    """The configuration docs/SCALING.md gives, for a test: trust, one small pool."""
    host, server_port = _server(pg_server_url)
    return "\n".join(
        [
            "[databases]",
            f"* = host={host} port={server_port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "pool_mode = transaction",
            "default_pool_size = 2",
            "max_client_conn = 500",
            "auth_type = trust",
            f"auth_file = {directory / 'userlist.txt'}",
            f"auth_user = {make_url(pg_server_url).username or 'postgres'}",
            f"ignore_startup_parameters = {ignore_startup_parameters}",
            "",
        ]
    )


@contextmanager
def running_pgbouncer(
    pg_server_url: str, directory: Path, *, ignore_startup_parameters: str = ""
) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode on a free port until the block ends (then killed)."""
    binary = pgbouncer_binary()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = make_url(pg_server_url)
    user, password = url.username or "postgres", url.password or ""
    (directory / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        pgbouncer_ini(
            pg_server_url, directory, port, ignore_startup_parameters=ignore_startup_parameters
        )
    )
    command = [binary, str(ini)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root (CI runs as root)
        command[1:1] = ["-u", "nobody"]
        for path in (directory, ini, directory / "userlist.txt"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        host, _ = _server(pg_server_url)
        if host.startswith("/"):  # a unix socket directory (the embedded server's is 0700)
            sockets = Path(host)
            sockets.chmod(sockets.stat().st_mode | 0o011)  # nobody may reach the socket in it
    log = directory / "pgbouncer.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    bouncer = PgBouncer(port=port, log=log)
    try:
        _wait_until_listening(process, bouncer)
        yield bouncer
    finally:
        process.kill()
        process.wait(timeout=10)


def _wait_until_listening(process: subprocess.Popen[bytes], bouncer: PgBouncer) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"pgbouncer exited with {process.returncode}:\n{bouncer.output()}")
        try:
            socket.create_connection(("127.0.0.1", bouncer.port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail(f"pgbouncer did not listen within 10 s:\n{bouncer.output()}")
