"""`taskloom api --workers N`: N API processes on one listening socket, sharing their metrics.

The supervisor binds the address once and starts N `taskloom api --listen-fd FD` processes that
inherit the socket (the kernel hands each new connection to one of them). Every process then
counts into prometheus_client's multiprocess directory, so a scrape of `/metrics` on any of them
sums all N (docs/OBSERVABILITY.md "Several processes"): PROMETHEUS_MULTIPROC_DIR when the operator
shares one (with `taskloom worker` too; it is theirs to clear at deploy, so it is left as is),
else a fresh private directory made for this run and removed when it ends.

SIGTERM or SIGINT is passed on to every process as SIGTERM (each drains its requests as a single
`taskloom api` does); the processes run in their own process group, so Ctrl-C in a terminal
reaches them once, through here. If one process exits on its own, the others are stopped and the
supervisor exits 1: the process manager restarts the whole set rather than this file second-
guessing why a process died.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client import multiprocess

from taskloom.config import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BACKLOG = 2048  # uvicorn's default
POLL_SECONDS = 0.2

log = structlog.get_logger("taskloom.api")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    sock.set_inheritable(True)
    return sock


def _metrics_directory(settings: Settings) -> tuple[Path, bool]:
    """(the shared metrics directory, whether this run made it and must remove it)."""
    if settings.prometheus_multiproc_dir is not None:
        settings.prometheus_multiproc_dir.mkdir(parents=True, exist_ok=True)
        return settings.prometheus_multiproc_dir, False
    return Path(tempfile.mkdtemp(prefix="taskloom-api-metrics-")), True


def serve_processes(*, settings: Settings, host: str, port: int, workers: int) -> int:
    """Run `workers` API processes until a signal (exit 0) or until one of them exits (1)."""
    sock = _listen(host, port)
    directory, owned = _metrics_directory(settings)
    env = {**os.environ, MULTIPROC_ENV: str(directory)}
    command = [sys.executable, "-m", "taskloom", "api", "--host", host, "--port", str(port)]
    command += ["--listen-fd", str(sock.fileno())]
    stopping = False
    procs: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        for _ in range(workers):
            procs.append(
                subprocess.Popen(  # noqa: S603  (our own command line)
                    command, env=env, pass_fds=(sock.fileno(),), process_group=0
                )
            )
        sock.close()  # the processes hold it now
        log.info("api_processes_started", pids=[p.pid for p in procs], metrics_dir=str(directory))
        status = 0
        while any(p.poll() is None for p in procs):
            exited = [p for p in procs if p.returncode is not None]
            if exited and not stopping:
                log.error("api_process_exited", pid=exited[0].pid, code=exited[0].returncode)
                status = 1
                stop(signal.SIGTERM, None)
            time.sleep(POLL_SECONDS)
        if not stopping:  # every process ended by itself at once
            status = 1
        return status
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            multiprocess.mark_process_dead(proc.pid, str(directory))  # type: ignore[no-untyped-call]
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
