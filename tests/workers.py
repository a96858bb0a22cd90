"""Queue tests run real `taskloom worker` processes against the test database and a Redis
server of their own (so FLUSHALL harms nothing else), with an in-process API on the same
servers and a local HTTP server that counts every call a workflow step makes."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text, update
from sqlalchemy.engine import make_url

from taskloom.config import Settings
from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import ExecutionStatus, WorkflowExecution
from taskloom.executions.queue import ExecutionQueue
from taskloom.runtime import Runtime
from tests.cli_support import app_role_route, clean_env, redis_route
from tests.factories import Account, register
from tests.in_process import asgi_client, opened_runtime, running_app
from tests.redis_cluster import TEST_REDIS_CLUSTER
from tests.servers import free_port, plain_redis_config, start_redis
from tests.tcp_proxy import TcpProxy

TERMINAL = {"succeeded", "failed", "cancelled"}


# --- a local HTTP server that counts calls ----------------------------------------------------


@dataclass
class CallLog:
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    inflight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    max_inflight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    idempotency_keys: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    request_ids: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    """`/count/<key>?sleep=S&fail=N&status=C&group=G`: the first N calls answer C (default
    503); the others sleep S seconds and answer 200 with the call number and the request body.
    `group` tracks how many calls of a group are in flight at once."""

    log: CallLog

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"null") if length else None
        key = url.path.removeprefix("/count/")
        group = query.get("group", key)
        with self.log.lock:
            self.log.calls[key] += 1
            call = self.log.calls[key]
            self.log.inflight[group] += 1
            self.log.max_inflight[group] = max(
                self.log.max_inflight[group], self.log.inflight[group]
            )
            self.log.idempotency_keys[key].append(self.headers.get("idempotency-key", ""))
            self.log.request_ids[key].append(self.headers.get("x-request-id", ""))
        try:
            if call <= int(query.get("fail", 0)):
                self._json(int(query.get("status", 503)), {"error": "planned failure"})
                return
            time.sleep(float(query.get("sleep", 0)))
            self._json(200, {"key": key, "call": call, "body": body})
        finally:
            with self.log.lock:
                self.log.inflight[group] -= 1

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@dataclass
class CountingServer:
    base: str
    log: CallLog

    def url(self, key: str, **query: object) -> str:
        suffix = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{self.base}/count/{key}" + (f"?{suffix}" if suffix else "")

    def calls(self, key: str) -> int:
        with self.log.lock:
            return self.log.calls.get(key, 0)


@pytest.fixture(scope="session")
def counting_server() -> Iterator[CountingServer]:
    log = CallLog()
    handler = type("Handler", (_Handler,), {"log": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield CountingServer(base=f"http://127.0.0.1:{server.server_address[1]}", log=log)
    server.shutdown()


# --- servers and settings ------------------------------------------------------------------


@pytest.fixture(scope="session")
def queue_redis_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if TEST_REDIS_CLUSTER:  # the session's Cluster (its keys under their own prefix)
        yield request.getfixturevalue("redis_url")
        return
    directory = tmp_path_factory.mktemp("redis-queue")
    port = free_port()
    process = start_redis(directory, plain_redis_config(directory, port), port)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


QUEUE_TEST_SETTINGS: dict[str, Any] = {
    "redis_key_prefix": "qtest:",
    "outbound_allowed_hosts": "127.0.0.1",
    "execution_backoff_ms": 200,
    "reconcile_interval_seconds": 0.5,
    "reconcile_grace_seconds": 2.0,
    "worker_concurrency": 4,
    "log_level": "info",
}


@pytest.fixture(scope="session")
def queue_settings(settings: Settings, queue_redis_url: str) -> Settings:
    return settings.model_copy(update={"redis_url": queue_redis_url, **QUEUE_TEST_SETTINGS})


@pytest.fixture(scope="session")
async def queue_runtime(queue_settings: Settings) -> AsyncIterator[Runtime]:
    async with opened_runtime(queue_settings) as runtime:
        yield runtime


@pytest.fixture
async def withdrawn_after(queue_runtime: Runtime) -> AsyncIterator[None]:
    """For tests that make executions no worker runs: those still queued after the test are
    cancelled and withdrawn, or they would hold the fair scheduler's admissions (the session's
    queue admits WORKER_CONCURRENCY while no worker runs) that later tests' executions need."""
    async with system_transaction(queue_runtime.database) as db:
        began = await db.scalar(text("select now()"))
    yield
    async with system_transaction(queue_runtime.database) as db:
        made = (
            await db.execute(
                update(WorkflowExecution)
                .where(
                    WorkflowExecution.created_at >= began,
                    WorkflowExecution.status == ExecutionStatus.QUEUED,
                )
                .values(status=ExecutionStatus.CANCELLED)
                .returning(WorkflowExecution.id, WorkflowExecution.org_id)
            )
        ).all()
    queue = ExecutionQueue(queue_runtime)
    for execution_id, org_id in made:
        await queue.withdraw(execution_id=execution_id, org_id=org_id)


@pytest.fixture(scope="session")
async def queue_app(queue_runtime: Runtime) -> AsyncIterator[FastAPI]:
    async with running_app(queue_runtime) as application:
        yield application


@pytest.fixture
async def api(queue_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(queue_app, ip="203.0.113.8") as client:
        yield client


@pytest.fixture
async def owner(api: httpx.AsyncClient) -> Account:
    return await register(api, label="owner", organization_name="Queue Org")


# --- worker processes ------------------------------------------------------------------------


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskloom", "worker"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=log_path.parent,
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def logged(self, event: str, containing: str = "") -> list[str]:
        """The log lines of `event` (that also contain `containing`)."""
        return [
            line
            for line in self.output().splitlines()
            if f" {event} " in line and containing in line
        ]

    async def wait_for_log(
        self, event: str, *, containing: str = "", times: int = 1, within: float = 30
    ) -> list[str]:
        """Wait until the worker has logged `event` `times` times: proof that it took a path,
        where a sleep would only hope so."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if len(lines := self.logged(event, containing)) >= times:
                return lines
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"the worker logged {event} {containing} {len(self.logged(event, containing))} "
            f"time(s), expected {times}:\n{self.output()}"
        )

    def wait_until_started(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "worker_started" in self.output():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"worker did not start:\n{self.output()}")

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


def worker_env(settings: Settings, **overrides: object) -> dict[str, str]:
    values: dict[str, object] = {
        "TASKLOOM_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "DATABASE_APP_ROLE": settings.database_app_role,
        **app_role_route(settings),
        "REDIS_URL": settings.redis_url,
        **redis_route(settings),
        "PYTHONUNBUFFERED": "1",
        # The API process's secrets, so the worker decrypts the connections it stored.
        "JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "CREDENTIAL_ENCRYPTION_KEYS": (
            settings.credential_encryption_keys.get_secret_value()
            if settings.credential_encryption_keys
            else None
        ),
        **{name.upper(): value for name, value in QUEUE_TEST_SETTINGS.items()},
    }
    values.update({k.upper(): v for k, v in overrides.items()})
    return clean_env(**{k: str(v) for k, v in values.items() if v is not None})


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(queue_settings: Settings, tmp_path: Path) -> Iterator[StartWorker]:
    started: list[WorkerProcess] = []

    def start(**overrides: object) -> WorkerProcess:
        worker = WorkerProcess(
            worker_env(queue_settings, **overrides), tmp_path / f"worker-{len(started)}.log"
        )
        started.append(worker)
        worker.wait_until_started()
        return worker

    yield start
    for number, worker in enumerate(started):
        worker.stop()
        print(f"--- worker {number} log ---\n{worker.output()}")  # shown when a test fails


# --- API helpers -----------------------------------------------------------------------------


def unique_key(label: str) -> str:
    """A counting-server key no other test uses."""
    return f"{label}-{secrets.token_hex(4)}"


async def create_workflow(
    api: httpx.AsyncClient,
    account: Account,
    steps: list[dict[str, Any]],
    name: str = "wf",
    **definition: Any,
) -> str:
    """A workflow of `steps`; keyword arguments are the definition's other fields (`output`,
    `deadline`, `max_parallel_steps`)."""
    response = await api.post(
        "/api/workflows",
        json={"name": name, "definition": {"steps": steps, **definition}},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def execute(
    api: httpx.AsyncClient,
    account: Account,
    workflow_id: str,
    payload: dict[str, Any] | None = None,
) -> str:
    response = await api.post(
        f"/api/workflows/{workflow_id}/execute",
        json={"input": payload or {}},
        headers=account.headers,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["execution_id"])


async def wait_for_status(
    api: httpx.AsyncClient,
    account: Account,
    execution_id: str,
    statuses: set[str] = TERMINAL,
    within: float = 30,
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await api.get(f"/api/executions/{execution_id}", headers=account.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in statuses:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"execution stayed {body.get('status')!r}: {body}")


async def execution_rows(
    runtime: Runtime, execution_id: uuid.UUID
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The execution's row (status, attempts, output, started_at, finished_at) and its steps'
    (org_id, step_id, status, attempts, input, output, started_at, finished_at), read as the
    system role."""
    async with system_transaction(runtime.database) as db:
        execution = (
            (
                await db.execute(
                    text(
                        "select status, attempts, output, started_at, finished_at "
                        "from workflow_executions where id = :id"
                    ),
                    {"id": execution_id},
                )
            )
            .mappings()
            .one()
        )
        steps = (
            (
                await db.execute(
                    text(
                        "select org_id, step_id, status, attempts, input, output, started_at, "
                        "finished_at from execution_steps where execution_id = :id"
                    ),
                    {"id": execution_id},
                )
            )
            .mappings()
            .all()
        )
    return dict(execution), [dict(s) for s in steps]


# --- a database the test can cut off ---------------------------------------------------------


@dataclass(frozen=True)
class ProxiedDatabase:
    proxy: TcpProxy
    url: str  # DATABASE_URL through the proxy, for a worker


@pytest.fixture
def proxied_database(queue_settings: Settings) -> Iterator[ProxiedDatabase]:
    """PostgreSQL behind a TCP proxy the test can cut: an outage as a worker sees it. The
    worker's URL names only the proxy: a unix socket directory (`?host=/…`, the embedded
    server's) becomes the proxy's target, never a way around it."""
    url = make_url(queue_settings.database_url or "")
    queried = url.query.get("host")  # libpq's ?host= wins over the URL's host
    host = (queried[0] if isinstance(queried, tuple) else queried) or url.host or "127.0.0.1"
    port = url.port or 5432
    target = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
    proxy = TcpProxy(target)
    through = url.difference_update_query(["host", "port"]).set(host="127.0.0.1", port=proxy.port)
    yield ProxiedDatabase(proxy, through.render_as_string(hide_password=False))
    proxy.close()


async def waiting_for_approval(
    api: httpx.AsyncClient, account: Account, start_worker: StartWorker, name: str
) -> tuple[str, dict[str, Any]]:
    """A real worker runs a workflow whose `ok` step asks an admin "Ship <name>?" (1 h timeout)
    and then `done`; returns the execution id and the execution once it waits for the decision.
    The output is `{"approved": …}`."""
    workflow_id = await create_workflow(
        api,
        account,
        [
            {
                "id": "ok",
                "type": "approval",
                "args": {
                    "approvers": {"role": "admin"},
                    "message": "Ship {{ input.name }}?",
                    "timeout": "1h",
                },
            },
            {"id": "done", "type": "transform", "args": {"value": "{{ steps.ok.output }}"}},
        ],
        output={"approved": "{{ steps.ok.output.approved }}"},
    )
    start_worker()
    execution_id = await execute(api, account, workflow_id, {"name": name})
    return execution_id, await wait_for_status(api, account, execution_id, {"waiting"}, within=15)
