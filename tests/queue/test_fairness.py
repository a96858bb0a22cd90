"""Fair sharing of the workers between organizations (docs/adr/0006), with real worker
processes: a capped organization waits in Redis without holding a worker slot, organizations
take turns, the queued cap answers 429, and an admission cut short by a crash loses nothing.

Each test runs a deployment of its own (a fresh Redis key prefix and its own in-process API),
so the scheduler's state starts empty and its settings are the test's."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from taskloom.app import create_app
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.config import Settings
from taskloom.db.tenancy import tenant_transaction
from taskloom.executions import service
from taskloom.executions.models import ExecutionStatus, WorkflowExecution
from taskloom.executions.queue import ExecutionQueue
from taskloom.executions.reconciler import Reconciler, ReconcileReport
from taskloom.orgs.models import Role
from taskloom.runtime import Runtime, open_runtime
from tests.factories import Account, register
from tests.web.support import post_form, sign_in, text_of
from tests.workers import (
    StartWorker,
    create_workflow,
    execute,
    wait_for_status,
)

# --- a local HTTP server that holds calls until released ----------------------------------------


@dataclass
class GateLog:
    order: list[str] = field(default_factory=list)  # the label of each call, as they arrive
    inflight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    max_inflight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    open: dict[str, threading.Event] = field(default_factory=lambda: defaultdict(threading.Event))
    lock: threading.Lock = field(default_factory=threading.Lock)


class _GateHandler(BaseHTTPRequestHandler):
    """`/gate/<label>?hold=1`: counts the call under its label and, with `hold`, answers only
    once the test opens the label's gate."""

    log: GateLog

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        label = url.path.removeprefix("/gate/")
        hold = "hold" in parse_qs(url.query)
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with self.log.lock:
            self.log.order.append(label)
            self.log.inflight[label] += 1
            self.log.max_inflight[label] = max(
                self.log.max_inflight[label], self.log.inflight[label]
            )
            gate = self.log.open[label]
        try:
            if hold:
                gate.wait(timeout=25)  # under the http step's 30 s timeout
            body = b"{}"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with self.log.lock:
                self.log.inflight[label] -= 1

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Gate:
    base: str
    log: GateLog

    def url(self, label: str, *, hold: bool = False) -> str:
        return f"{self.base}/gate/{label}" + ("?hold=1" if hold else "")

    def release(self, label: str) -> None:
        with self.log.lock:
            gate = self.log.open[label]
        gate.set()

    def inflight(self, label: str) -> int:
        with self.log.lock:
            return self.log.inflight[label]

    def order(self) -> list[str]:
        with self.log.lock:
            return list(self.log.order)


@pytest.fixture
def gate() -> Iterator[Gate]:
    log = GateLog()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_GateHandler,), {"log": log}))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Gate(base=f"http://127.0.0.1:{server.server_address[1]}", log=log)
    for event in list(log.open.values()):
        event.set()
    server.shutdown()


# --- a deployment of the test's own ---------------------------------------------------------


@dataclass
class Deployment:
    runtime: Runtime
    api: httpx.AsyncClient
    worker_settings: dict[str, object]  # what a worker of this deployment is started with

    async def account(self, label: str) -> Account:
        return await register(self.api, label=label, organization_name=f"Org {label}")

    async def http_workflow(self, owner: Account, url: str) -> str:
        return await create_workflow(
            self.api, owner, [{"id": "call", "type": "http", "args": {"url": url}}]
        )


@asynccontextmanager
async def deployment(queue_settings: Settings, **overrides: Any) -> AsyncIterator[Deployment]:
    """An API on a fresh key prefix with `overrides` (settings names, lower case)."""
    values = {"redis_key_prefix": f"fair-{secrets.token_hex(4)}:", **overrides}
    runtime = await open_runtime(queue_settings.model_copy(update=values))
    app = create_app(runtime=runtime)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
                yield Deployment(runtime, api, dict(values))
    finally:
        await runtime.close()


async def poll(predicate: Any, *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s: {what}")


async def job_states(runtime: Runtime, ids: list[str]) -> list[str]:
    return [await ExecutionQueue(runtime).state(uuid.UUID(i)) for i in ids]


# --- the guarantees ------------------------------------------------------------------------------


async def test_an_organization_at_its_cap_holds_no_worker_slot_while_another_runs_at_once(
    queue_settings: Settings, start_worker: StartWorker, gate: Gate
) -> None:
    async with deployment(queue_settings, max_running_per_org=1, worker_concurrency=4) as d:
        flooder = await d.account("flooder")
        others = [await d.account(f"other{n}") for n in range(3)]
        flood_wf = await d.http_workflow(flooder, gate.url("flood", hold=True))
        other_wfs = [await d.http_workflow(o, gate.url("other", hold=True)) for o in others]
        worker = start_worker(**d.worker_settings)
        flood = [await execute(d.api, flooder, flood_wf) for _ in range(10)]
        await poll(
            lambda: asyncio.sleep(0, gate.inflight("flood") == 1), within=15, what="flood runs"
        )
        other_ids = [await execute(d.api, o, wf) for o, wf in zip(others, other_wfs, strict=True)]
        # Three other organizations take the three other slots at once, although ten
        # executions of the flooder were accepted before theirs.
        began = time.monotonic()
        await poll(
            lambda: asyncio.sleep(0, gate.inflight("other") == 3), within=10, what="others run"
        )
        assert time.monotonic() - began < 5
        # Meanwhile the flooder's nine waiting executions hold nothing: no BullMQ job (so no
        # worker slot, no claim, no database connection), just their place in its ready list.
        for _ in range(20):
            states = await job_states(d.runtime, flood)
            assert states.count("active") == 1, states
            assert states.count("unknown") == 9, states
            assert await d.runtime.fair.waiting(flooder.org_id) == 9  # type: ignore[arg-type]
            assert gate.inflight("flood") == 1
            await asyncio.sleep(0.05)
        counts = await ExecutionQueue(d.runtime).counts()
        assert counts.get("active") == 4, counts
        assert counts.get("delayed", 0) == 0, counts

        gate.release("other")
        gate.release("flood")
        for o, execution_id in zip(others, other_ids, strict=True):
            assert (await wait_for_status(d.api, o, execution_id))["status"] == "succeeded"
        for execution_id in flood:
            body = await wait_for_status(d.api, flooder, execution_id, within=60)
            assert body["status"] == "succeeded"
        assert gate.log.max_inflight["flood"] == 1  # never more than its cap
        assert gate.log.max_inflight["other"] == 3
        assert "execution_deferred" not in worker.output()  # the claim never had to defer
        assert await _slots_freed(d.runtime.fair, flooder.org_id) == set()  # type: ignore[arg-type]


async def test_organizations_take_turns_round_robin(
    queue_settings: Settings, start_worker: StartWorker, gate: Gate
) -> None:
    async with deployment(queue_settings, max_running_per_org=100, worker_concurrency=1) as d:
        accounts = {label: await d.account(label) for label in "ABC"}
        workflows = {
            label: await d.http_workflow(a, gate.url(label)) for label, a in accounts.items()
        }
        submitted = []
        for label in "ABC":  # five of A, then five of B, then five of C
            for _ in range(5):
                submitted.append((label, await execute(d.api, accounts[label], workflows[label])))
        start_worker(**d.worker_settings)
        for label, execution_id in submitted:
            body = await wait_for_status(d.api, accounts[label], execution_id, within=60)
            assert body["status"] == "succeeded"
        # Round k serves the k-th execution of each organization (in any order within it).
        order = gate.order()
        rounds = ["".join(sorted(order[i : i + 3])) for i in range(0, 15, 3)]
        assert rounds == ["ABC"] * 5, order


async def test_beyond_max_queued_per_org_executing_answers_429_with_retry_after_on_every_path(
    queue_settings: Settings,
) -> None:
    async with deployment(queue_settings, max_queued_per_org=3) as d:
        owner, other = await d.account("busy"), await d.account("calm")
        workflow = await create_workflow(
            d.api, owner, [{"id": "t", "type": "transform", "args": {"value": 1}}]
        )
        ids = [await execute(d.api, owner, workflow) for _ in range(3)]  # no worker: all wait
        refused = await d.api.post(
            f"/api/workflows/{workflow}/execute", json={"input": {}}, headers=owner.headers
        )
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_queued_executions"
        assert int(refused.headers["retry-after"]) >= 1
        # Another organization is not affected.
        calm = await create_workflow(
            d.api, other, [{"id": "t", "type": "transform", "args": {"value": 1}}]
        )
        await execute(d.api, other, calm)

        # A retry is an execution starting too: cancel one (2 queued), start one (3), retry.
        cancelled = await d.api.post(f"/api/executions/{ids[0]}/cancel", headers=owner.headers)
        assert cancelled.json()["status"] == "cancelled"
        await execute(d.api, owner, workflow)
        retried = await d.api.post(f"/api/executions/{ids[0]}/retry", headers=owner.headers)
        assert retried.status_code == 429, retried.text
        assert retried.json()["error"]["code"] == "too_many_queued_executions"
        assert "retry-after" in retried.headers
        # A re-run (a new execution) too, and nothing of it is left behind.
        rerun = await d.api.post(
            f"/api/executions/{ids[0]}/retry", json={"from_step": "t"}, headers=owner.headers
        )
        assert rerun.status_code == 429, rerun.text
        assert rerun.json()["error"]["code"] == "too_many_queued_executions"
        assert "retry-after" in rerun.headers
        old = await d.api.get(f"/api/executions/{ids[0]}", headers=owner.headers)
        assert old.json()["reruns"] == []

        # The web UI's run button.
        transport = d.api._transport  # the same app
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
            await sign_in(browser, owner.email)
            page = f"/ui/workflows/{workflow}"
            run = await post_form(browser, f"{page}/run", {"input": "{}"}, from_page=page)
            assert run.status_code == 429
            assert "retry-after" in run.headers
            assert "queued" in text_of(run)
        async with system_count(d.runtime, owner) as queued:
            assert queued == 3


async def _slots_freed(fair: Any, org_id: uuid.UUID) -> set[str]:
    """The organization's running slots once they are given back: a slot is freed when the
    job completes, a moment after the execution's row says succeeded (wait, don't race)."""
    for _ in range(100):
        running: set[str] = await fair.running(org_id)
        if not running:
            return running
        await asyncio.sleep(0.05)
    return running


@asynccontextmanager
async def system_count(runtime: Runtime, owner: Account) -> AsyncIterator[int]:
    async with tenant_transaction(runtime.database, org_id=owner.org_id, user_id=None) as db:
        yield int(
            await db.scalar(
                select(func.count())
                .select_from(WorkflowExecution)
                .where(WorkflowExecution.status == ExecutionStatus.QUEUED)
            )
            or 0
        )


async def test_an_admission_cut_short_by_a_crash_loses_nothing(
    queue_settings: Settings, start_worker: StartWorker, gate: Gate
) -> None:
    """A process that ran the admission script and died before `Queue.add` (and one that died
    between its commit and the script) leaves executions admitted without a job, or nowhere in
    Redis at all: the reconciler finds every one and they all run."""
    async with deployment(queue_settings, max_running_per_org=2, worker_concurrency=2) as d:
        owner = await d.account("crash")
        assert owner.org_id is not None
        workflow = await d.http_workflow(owner, gate.url("crash"))
        principal = Principal(
            user_id=owner.user_id, org_id=owner.org_id, role=Role.OWNER, kind="session"
        )
        created: list[uuid.UUID] = []
        async with tenant_transaction(
            d.runtime.database, org_id=owner.org_id, user_id=owner.user_id
        ) as db:
            for _ in range(6):  # committed rows whose after-commit submission never ran
                started = await service.start_execution(
                    db=db,
                    org_id=owner.org_id,
                    workflow_id=uuid.UUID(workflow),
                    input={},
                    max_queued=100,
                    origin=service.api_origin(principal, AuditContext(request_id="crash")),
                )
                created.append(started.execution.id)
        fair = d.runtime.fair
        admitted = []
        for execution_id in created[:5]:  # the script ran; the process died before Queue.add
            admitted += await fair.accept(org_id=owner.org_id, execution_id=execution_id, data={})
        assert len(admitted) == 2  # the cap: two admitted, three ready, none with a job
        assert set(await job_states(d.runtime, [str(i) for i in created])) == {"unknown"}
        # created[5]: the process died between its commit and the script: in no list at all.

        start_worker(**d.worker_settings)  # its reconciler: 0.5 s ticks, 2 s grace
        for execution_id in created:
            body = await wait_for_status(d.api, owner, str(execution_id), within=60)
            assert body["status"] == "succeeded", body
        assert gate.log.max_inflight["crash"] <= 2
        assert len(gate.order()) == 6  # each called once
        assert await _slots_freed(fair, owner.org_id) == set()
        assert await fair.waiting(owner.org_id) == 0


async def test_the_slot_of_an_execution_whose_worker_died_after_finishing_it_is_freed(
    queue_settings: Settings,
) -> None:
    """A worker killed between committing an execution's end and freeing its slot: the
    reconciler frees the slot, and the organization's next execution is admitted."""
    async with deployment(queue_settings, max_running_per_org=1) as d:
        owner = await d.account("finisher")
        assert owner.org_id is not None
        workflow = await create_workflow(
            d.api, owner, [{"id": "t", "type": "transform", "args": {"value": 1}}]
        )
        first, second = [uuid.UUID(await execute(d.api, owner, workflow)) for _ in range(2)]
        fair = d.runtime.fair
        assert await fair.running(owner.org_id) == {str(first)}  # the cap: the second waits
        assert await fair.waiting(owner.org_id) == 1
        async with tenant_transaction(d.runtime.database, org_id=owner.org_id, user_id=None) as db:
            done = await db.get(WorkflowExecution, first)
            assert done is not None
            done.status = ExecutionStatus.SUCCEEDED  # committed; the slot was never freed

        # The reconciler's pass over executions admitted before its cutoff (here: any).
        report = ReconcileReport()
        cutoff = int((time.time() + 60) * 1000)
        await Reconciler(d.runtime).settle_admitted(cutoff, set(), report)
        assert report.released == 1
        assert await fair.running(owner.org_id) == {str(second)}
        assert await ExecutionQueue(d.runtime).state(second) == "waiting"


async def test_the_queued_limit_is_exact_although_organizations_far_below_it_are_not_counted(
    queue_settings: Settings,
) -> None:
    """Far below MAX_QUEUED_PER_ORG (by a tenth, at least 100) the API trusts the count its
    last submission for the organization returned and skips the exact count; near the limit it
    counts, so the limit holds exactly."""
    async with deployment(queue_settings, max_queued_per_org=250) as d:
        owner = await d.account("many")
        workflow = await create_workflow(
            d.api, owner, [{"id": "t", "type": "transform", "args": {"value": 1}}]
        )
        for _ in range(250):
            await execute(d.api, owner, workflow)
        refused = await d.api.post(
            f"/api/workflows/{workflow}/execute", json={"input": {}}, headers=owner.headers
        )
        assert refused.status_code == 429, refused.text
        async with system_count(d.runtime, owner) as queued:
            assert queued == 250
