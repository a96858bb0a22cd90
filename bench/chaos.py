"""Chaos: executions keep their guarantees while workers are killed and Redis restarts.

An in-process API (the real app over ASGI) and `taskloom worker` processes share one
PostgreSQL and a redis-server of the script's own (AOF on, in a temporary directory, so it can
be restarted). M executions of a chain of `http` steps and, spread among them, D executions of
issue 18's DAG (a fan-out of 3, a for-each of 5 items with max_parallel 3, a durable wait, a
join: `dag_workflow`) are submitted; each `http` step or for-each item calls a local HTTP server
that records every call with its `Idempotency-Key` (`<execution id>:<step id>[:<item index>]`)
and answers after a short delay, so kills land mid-step. Meanwhile, every `--kill-every` seconds a
random worker gets SIGKILL or SIGTERM (alternately) and a new one is started at once — a kill
waits until every worker has been taking jobs for `--min-ready` seconds, since a worker needs
several seconds to start and faster kills would only leave none running. Once, when half the
executions are finished, Redis is stopped (SIGTERM) and started again on the same port and data
directory, so it reloads its AOF. The run ends when every execution is terminal or at
`--time-limit`.

    python bench/chaos.py [--executions 2000] [--dag-executions 300] [--dag-wait 1s]
        [--workers 2] [--kill-every 2.0] [--time-limit 600]

Prints submitted, succeeded, failed, lost (never terminal), step calls, duplicated step calls
and whether each duplicate is explained by an interruption, and a `RESULT {json}` line. A
duplicate (a second call with the same Idempotency-Key) is explained when an interruption
overlaps the time between the two calls — a SIGKILL (the step restarts after the lock expires),
a SIGTERM until the process exited (a step interrupted by the hand-back restarts), or the Redis
restart until a lock could have expired — and each interruption explains at most one duplicate
per execution it could have been running (WORKER_CONCURRENCY for a worker, every worker's for
Redis) times the calls one execution can have in flight, and at most one per key. No finished
step may run again: the workers' logs show no step succeeding twice, and no step or for-each item
is called after its row was finished. Exits 0 iff nothing was lost, nothing failed, every
duplicate is explained and no finished step or item ran again.

`--database-url` (default TEST_DATABASE_URL, then BENCH_DATABASE_URL, then the local server)
must be allowed to create databases and roles: the run uses a database, an application role and
a Redis key prefix of its own and removes them at the end. Redis is always a redis-server started
here (the system's `redis-server`); `--keep DIR` keeps its data, the workers' logs and every
recorded call in DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import httpx
from redis.client import Redis
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text

try:
    from bench.scratch import scratch_deployment
except ModuleNotFoundError:  # run as `python bench/<script>.py`: bench/ is on sys.path
    from scratch import scratch_deployment  # type: ignore[no-redef]
from taskloom.app import create_app
from taskloom.config import Settings
from taskloom.executions.queue import ExecutionQueue
from taskloom.observability.logging import configure_logging
from taskloom.runtime import Runtime, open_runtime

# The suite's helpers for redis-server processes; run from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import free_port, start_redis

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
IN_FLIGHT = 16  # execute calls in flight at once
POLL_SECONDS = 0.5
TERMINAL = ("succeeded", "failed", "cancelled")
# Variables a worker must not inherit from this shell: the bench names its own servers.
FOREIGN_ENV = ("DATABASE_", "REDIS_", "TASKLOOM_", "JWT_", "TEST_", "CREDENTIAL_", "BENCH_")
COUNT_BY_STATUS = text(
    "select status, count(*) from workflow_executions where workflow_id = any(:wfs) group by status"
)
# Worker log events worth counting (the console renderer writes `[level    ] event  key=...`).
LOG_EVENTS = (
    "job_stalled",
    "job_handed_back",
    "handing_back",
    "reconciled",
    "execution_failed_by_reconciler",
    "lock_renewal_failed",
    "worker_error",
    "job_failed",
    "step_failed",
    "step_infrastructure_error",
    "step_crashed",
    "reconcile_failed",
    "worker_close_timed_out",
    "tasks_not_cancelled",
)
_LOG_LINE = re.compile(r"^\S+ \[\w+\s*\] (\w+)(.*)$", re.MULTILINE)
_JOB_KEY = re.compile(
    r":orchestration:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
)
_FIELD = re.compile(r"(execution_id|step_id)=(\S+)")


# --- a local HTTP server that records every step call ------------------------------------------


@dataclass
class Call:
    key: str  # the Idempotency-Key: "<execution id>:<step id>[:<item index>]"
    arrived: float  # time.monotonic() when the request arrived
    finished: float | None = None  # ... when its answer was written (or writing failed)
    arrived_unix: float = 0.0  # time.time() then, to compare with the rows' finished_at


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # many workers connect at once; never refuse one

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed worker's socket
            super().handle_error(request, client_address)


class CallRecorder:
    """`GET /step?sleep=S`: records the call, sleeps S seconds, answers 200 `{"ok": true}`."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                call = Call(
                    self.headers.get("idempotency-key", ""),
                    time.monotonic(),
                    arrived_unix=time.time(),
                )
                with recorder.lock:
                    recorder.calls.append(call)
                query = parse_qs(urlsplit(self.path).query)
                try:
                    time.sleep(float(query.get("sleep", ["0"])[0]))
                    body = b'{"ok": true}'
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    call.finished = time.monotonic()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, sleep: float) -> str:
        return f"{self.base}/step?sleep={sleep}"

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_steps(recorder: CallRecorder, steps: int, delay: float) -> list[dict[str, Any]]:
    return [
        {"id": f"s{n}", "type": "http", "args": {"url": recorder.url(delay)}}
        for n in range(1, steps + 1)
    ]


@dataclass
class ChaosWorkflow:
    """A workflow the chaos submits: its definition, the Idempotency-Key suffixes every
    succeeded execution must have called (`<step id>` or `<step id>:<item index>`), and how
    many calls one execution can have in flight at once (what one interruption can cut)."""

    name: str
    definition: dict[str, Any]
    keys: list[str]
    width: int


def chain_workflow(recorder: CallRecorder, steps: int, delay: float) -> ChaosWorkflow:
    """`steps` http steps in a chain (no `needs`): one call in flight at a time."""
    definition = {"steps": http_steps(recorder, steps, delay)}
    return ChaosWorkflow("chain", definition, [f"s{n}" for n in range(1, steps + 1)], 1)


def inline_workflow() -> ChaosWorkflow:
    """A one-step `transform` (ADR 0018): run inline, without a claim, once a worker has claimed
    one of its version; no call. Each must end succeeded with twice its input's `n`."""
    definition = {"steps": [{"id": "t", "type": "transform", "args": {"value": INLINE_VALUE}}]}
    return ChaosWorkflow("inline", definition, [], 1)


INLINE_VALUE = "{{ input.n * 2 }}"
INLINE_CHECK = text(
    "select count(*) filter (where status <> 'succeeded' or output is distinct from"
    " to_jsonb((input ->> 'n')::int * 2)) as wrong,"
    " count(*) filter (where started_at = finished_at) as inline"
    " from workflow_executions where workflow_id = :wf"
)


async def inline_outcome(runtime: Runtime, workflow_id: str) -> tuple[int, int]:
    """(executions not succeeded with the right output, executions finished inline)."""
    async with runtime.database.system_engine.connect() as conn:
        row = (await conn.execute(INLINE_CHECK, {"wf": workflow_id})).one()
    return int(row.wrong), int(row.inline)


DAG_FANOUT = 3
DAG_ITEMS, DAG_MAX_PARALLEL = 5, 3


def dag_workflow(recorder: CallRecorder, delay: float, wait: str | None) -> ChaosWorkflow:
    """Issue 18's DAG for the chaos: a root, a fan-out of DAG_FANOUT http steps and beside them
    an http for-each of DAG_ITEMS items (max_parallel DAG_MAX_PARALLEL; the items' keys are
    `<execution>:each:<index>`), the for-each followed by a durable `wait` (`wait`, e.g. "1s";
    None leaves it out), and an http join of them all. Ten calls per execution, at most
    DAG_FANOUT + DAG_MAX_PARALLEL in flight (max_parallel_steps 4: the fan-out and the
    for-each)."""
    url = recorder.url(delay)
    fanout = [f"f{n}" for n in range(1, DAG_FANOUT + 1)]
    steps: list[dict[str, Any]] = [
        {"id": "start", "type": "http", "args": {"url": url}},
        *({"id": f, "type": "http", "needs": ["start"], "args": {"url": url}} for f in fanout),
        {
            "id": "each",
            "type": "http",
            "needs": ["start"],
            "for_each": f"{{{{ range({DAG_ITEMS}) | list }}}}",
            "max_parallel": DAG_MAX_PARALLEL,
            "args": {"url": url + "&item={{ item }}"},
        },
    ]
    last = "each"
    if wait is not None:
        steps.append({"id": "pause", "type": "wait", "needs": ["each"], "args": {"for": wait}})
        last = "pause"
    steps.append({"id": "join", "type": "http", "needs": [*fanout, last], "args": {"url": url}})
    keys = ["start", *fanout, *(f"each:{i}" for i in range(DAG_ITEMS)), "join"]
    return ChaosWorkflow(
        "dag", {"max_parallel_steps": 4, "steps": steps}, keys, DAG_FANOUT + DAG_MAX_PARALLEL
    )


# --- a redis-server that keeps its data in an AOF and can be restarted ------------------------


class AofRedis:
    """redis-server on a free port with `appendonly yes`. `appendfsync everysec` (Redis's
    default for AOF): a SIGTERM makes Redis fsync the AOF before it exits, so a graceful restart
    loses nothing either way, and `always` would fsync on every write, which measures the disk
    rather than Taskloom. everysec can lose up to a second of writes on a crash (SIGKILL, power
    loss); the reconciler re-enqueues jobs lost that way."""

    def __init__(self, directory: Path, fsync: str = "everysec") -> None:
        self.directory = directory
        self.port = free_port()
        self.config = [
            f"port {self.port}",
            "bind 127.0.0.1",
            'save ""',  # no RDB snapshots: what survives a restart is what the AOF holds
            "appendonly yes",
            f"appendfsync {fsync}",
            f"dir {directory}",
            f"logfile {directory / 'redis.log'}",
        ]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = start_redis(directory, self.config, self.port)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        """Listening is not enough: while loading the AOF Redis answers LOADING."""
        client = Redis(port=self.port, socket_timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except (BusyLoadingError, RedisConnectionError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def jobs(self) -> int:
        """How many execution jobs (`...bull:orchestration:<uuid>` hashes) Redis holds."""
        client = Redis(port=self.port, socket_timeout=5, decode_responses=True)
        try:
            keys = client.scan_iter(match="*bull:orchestration:*", count=1000)
            return sum(1 for key in keys if _JOB_KEY.search(key))
        finally:
            client.close()

    def restart(self, down_seconds: float) -> dict[str, Any]:
        """SIGTERM, wait `down_seconds`, start again on the same port and directory (blocking:
        call it in a thread). Returns the stop/start times and the jobs Redis held around it."""
        jobs_before = self.jobs()
        stopped = time.monotonic()
        self.process.terminate()
        self.process.wait(timeout=60)
        time.sleep(down_seconds)
        self.process = start_redis(self.directory, self.config, self.port)
        self._wait_ready()
        up = time.monotonic()
        return {
            "stopped": stopped,
            "up": up,
            "jobs_before": jobs_before,
            "jobs_after": self.jobs(),
        }

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


# --- the chaos monkey ------------------------------------------------------------------------


class WorkerLike(Protocol):
    proc: subprocess.Popen[Any]

    def output(self) -> str: ...


def is_ready(worker: WorkerLike) -> bool:
    """The worker logged `worker_started`: its bullmq Worker is taking jobs."""
    return "worker_started" in worker.output()


@dataclass
class Interruption:
    """Something that may make a running step run again: [start, end] is when it could have
    interrupted a step; `capacity` the most step (or for-each item) calls it could have cut:
    the executions it could have been running times the calls one execution has in flight."""

    kind: str  # SIGKILL, SIGTERM, redis_restart, worker_exit (a worker died on its own)
    start: float
    end: float
    capacity: int
    pid: int | None = None


@dataclass
class Monkey:
    """Every `kill_every` seconds, SIGKILL or SIGTERM (alternately, SIGKILL first) a random
    worker and start a replacement with `spawn` at once. A kill waits until every worker has
    been taking jobs for `min_ready_seconds`: a worker needs seconds to start (importing
    Taskloom alone takes about 3 s of CPU), and kills faster than that would leave no worker
    running at all rather than test anything. Once, when `restart_redis_when()` first holds and
    every worker is up, restart Redis. A worker that exits on its own is replaced and counted."""

    spawn: Callable[[], Awaitable[WorkerLike]]
    workers: list[WorkerLike]
    kill_every: float
    concurrency: int
    recovery_seconds: float  # lock + stalled interval: how long a Redis blip may echo
    redis: AofRedis | None = None
    restart_redis_when: Callable[[], bool] = lambda: False
    redis_down_seconds: float = 1.0
    min_ready_seconds: float = 1.0
    # Calls one execution can have in flight (1 for a chain, more for a DAG's branches and
    # for-each items): an interruption of C executions can cut C x width calls.
    width: int = 1
    rng: random.Random = field(default_factory=random.Random)
    interruptions: list[Interruption] = field(default_factory=list)
    stopping: dict[int, tuple[WorkerLike, Interruption]] = field(default_factory=dict)
    all_workers: list[WorkerLike] = field(default_factory=list)
    spawned_at: dict[int, float] = field(default_factory=dict)
    ready_at: dict[int, float] = field(default_factory=dict)
    redis_restart: dict[str, Any] | None = None
    kills: Counter[str] = field(default_factory=Counter)
    # Seconds from SIGTERM to exit, per SIGTERMed worker (mid-run and at the end); None when
    # one had to be SIGKILLed.
    sigterm_exits: list[float | None] = field(default_factory=list)
    _exit_timers: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for worker in self.workers:
            self.all_workers.append(worker)
            self.spawned_at[worker.proc.pid] = time.monotonic()

    async def wait_ready(self, within: float = 120) -> None:
        """Until every worker has started (raises if one exits or it takes too long)."""
        deadline = time.monotonic() + within
        while not all(self._ready(w, time.monotonic()) for w in self.workers):
            exited = [w for w in self.workers if w.proc.poll() is not None]
            if exited or time.monotonic() > deadline:
                logs = "\n".join(w.output()[-3000:] for w in exited or self.workers)
                raise RuntimeError(f"workers did not start:\n{logs}")
            await asyncio.sleep(0.1)

    def _ready(self, worker: WorkerLike, now: float) -> bool:
        pid = worker.proc.pid
        if pid not in self.ready_at and is_ready(worker):
            self.ready_at[pid] = now
        return pid in self.ready_at

    def _all_working(self, now: float) -> bool:
        return bool(self.workers) and all(
            self._ready(w, now) and now - self.ready_at[w.proc.pid] >= self.min_ready_seconds
            for w in self.workers
        )

    def start_seconds(self) -> list[float]:
        """Spawn to `worker_started`, per worker that got there."""
        return [at - self.spawned_at[pid] for pid, at in self.ready_at.items()]

    async def run(self, stop: asyncio.Event) -> None:
        next_kill = time.monotonic() + self.kill_every
        last_poll = time.monotonic()
        while not stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
            now = time.monotonic()
            self._reap(now)
            for worker in [w for w in self.workers if w.proc.poll() is not None]:
                # Died without being told to: an interruption we did not cause (and a finding).
                self.workers.remove(worker)
                self.interruptions.append(
                    Interruption("worker_exit", last_poll, now, self._capacity(), worker.proc.pid)
                )
                await self._add_worker()
            last_poll = now
            if (
                self.redis is not None
                and self.redis_restart is None
                and self.restart_redis_when()
                # Not while a worker starts: one that cannot reach Redis at start-up exits.
                and all(self._ready(w, now) for w in self.workers)
            ):
                await self._restart_redis()
            if now >= next_kill and self._all_working(now):
                await self._kill(self.rng.choice(self.workers))
                next_kill = time.monotonic() + self.kill_every

    async def _kill(self, victim: WorkerLike) -> None:
        sig = signal.SIGKILL if sum(self.kills.values()) % 2 == 0 else signal.SIGTERM
        now = time.monotonic()
        victim.proc.send_signal(sig)
        self.workers.remove(victim)
        self.kills[sig.name] += 1
        hit = Interruption(sig.name, now, now, self._capacity(), victim.proc.pid)
        self.interruptions.append(hit)
        if sig == signal.SIGTERM:
            hit.end = float("inf")  # until it exits: it hands back what it did not finish
            self.stopping[victim.proc.pid] = (victim, hit)
            self._exit_timers.append(asyncio.create_task(self._time_exit(victim, now, 60)))
        else:
            await asyncio.to_thread(victim.proc.wait, 30)
        await self._add_worker()

    async def _add_worker(self) -> None:
        worker = await self.spawn()
        self.spawned_at[worker.proc.pid] = time.monotonic()
        self.workers.append(worker)
        self.all_workers.append(worker)

    def _reap(self, now: float) -> None:
        for pid, (worker, hit) in list(self.stopping.items()):
            if worker.proc.poll() is not None:
                hit.end = now
                del self.stopping[pid]

    async def _restart_redis(self) -> None:
        assert self.redis is not None
        alive = len(self.workers) + len(self.stopping)
        restart = await asyncio.to_thread(self.redis.restart, self.redis_down_seconds)
        self.redis_restart = restart
        self.interruptions.append(
            Interruption(
                "redis_restart",
                restart["stopped"],
                restart["up"] + self.recovery_seconds + 1.0,
                alive * self._capacity(),
            )
        )

    def _capacity(self) -> int:
        """The most calls one worker's interruption can cut."""
        return self.concurrency * self.width

    async def _time_exit(self, worker: WorkerLike, sent: float, grace: float) -> None:
        """How long a SIGTERMed worker takes to exit, to 10 ms (a thread per wait would queue
        behind the default executor's few threads and overstate it)."""
        while worker.proc.poll() is None:
            if time.monotonic() - sent > grace:
                self.sigterm_exits.append(None)
                return
            await asyncio.sleep(0.01)
        self.sigterm_exits.append(time.monotonic() - sent)

    async def stop_all(self, grace: float = 60) -> None:
        """SIGTERM every worker still running, wait for all (SIGKILL after `grace` s)."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
                timer = self._time_exit(worker, time.monotonic(), grace)
                self._exit_timers.append(asyncio.create_task(timer))
        await asyncio.gather(*self._exit_timers)
        for worker in self.all_workers:
            try:
                await asyncio.to_thread(worker.proc.wait, grace)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                await asyncio.to_thread(worker.proc.wait, 10)
        self._reap(time.monotonic())


# --- judging the calls -----------------------------------------------------------------------


@dataclass
class Duplicates:
    calls: int
    keys: int
    duplicated: int  # calls beyond the first of their key
    concurrent: int  # ... of which overlapped the previous call of the same key
    explained: dict[str, int]  # by interruption kind
    unexplained: list[str]  # keys whose extra call no interruption explains

    @property
    def unexplained_count(self) -> int:
        return len(self.unexplained)


# A request a worker sent just before it was killed can reach the counting server after the kill
# (seen: 2.5 ms after a SIGKILL, with twice the executions per second in flight as before), so
# the first call of an interrupted step may arrive after the kill that interrupted it.
IN_FLIGHT_SECONDS = 0.05


def judge(calls: list[Call], interruptions: list[Interruption], end: float) -> Duplicates:
    """Match every duplicated call to an interruption that overlaps the time between it and the
    previous call of its key (less IN_FLIGHT_SECONDS), each interruption explaining at most
    `capacity` of them and at most one per key (a step, or a for-each item: its key is
    `<execution>:<step>:<index>`, so each item is judged on its own): a maximum bipartite
    matching (augmenting paths), so a duplicate is called unexplained only when no assignment
    at all could explain it."""
    by_key: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        by_key[call.key].append(call)
    windows: list[tuple[float, float, str]] = []
    concurrent = 0
    for key, key_calls in by_key.items():
        key_calls.sort(key=lambda c: c.arrived)
        for previous, following in itertools.pairwise(key_calls):
            windows.append((previous.arrived, following.arrived, key))
            if previous.finished is None or previous.finished > following.arrived:
                concurrent += 1
    # Kills first: a duplicate that a kill and the Redis restart both overlap is put down to
    # the kill (the attribution by kind is indicative; the count explained is exact).
    order = sorted(
        range(len(interruptions)), key=lambda n: interruptions[n].kind == "redis_restart"
    )
    fits = [
        [
            n
            for n in order
            if interruptions[n].start <= stop
            and min(interruptions[n].end, end) >= start - IN_FLIGHT_SECONDS
        ]
        for start, stop, _ in windows
    ]
    holders: list[list[int]] = [[] for _ in interruptions]  # windows each one explains

    def place(window: int, seen: set[int]) -> bool:
        key = windows[window][2]
        for n in fits[window]:
            if n in seen:
                continue
            seen.add(n)
            held = holders[n]
            # One interruption cuts a given step's (or item's) call once.
            same = [other for other in held if windows[other][2] == key]
            if not same and len(held) < interruptions[n].capacity:
                held.append(window)
                return True
            for other in same or list(held):
                if place(other, seen):  # `other` moved to another interruption
                    held.remove(other)
                    held.append(window)
                    return True
        return False

    placed = {w for w in range(len(windows)) if place(w, set())}
    explained: Counter[str] = Counter()
    for n, held in enumerate(holders):
        explained[interruptions[n].kind] += len(held)
    return Duplicates(
        calls=len(calls),
        keys=len(by_key),
        duplicated=len(windows),
        concurrent=concurrent,
        explained={kind: count for kind, count in explained.items() if count},
        unexplained=[windows[w][2] for w in range(len(windows)) if w not in placed],
    )


def missing_calls(calls: list[Call], succeeded: list[str], keys: list[str]) -> list[str]:
    """Keys of steps (and for-each items) of succeeded executions that never called the server
    (should be none); `keys` are the workflow's suffixes (ChaosWorkflow.keys)."""
    seen = {call.key for call in calls}
    return [
        f"{execution}:{key}"
        for execution in succeeded
        for key in keys
        if f"{execution}:{key}" not in seen
    ]


_FINISHED_ROWS = text(
    "select s.execution_id::text || ':' || s.step_id as key,"
    " extract(epoch from s.finished_at)::float8 as at from execution_steps s"
    " join workflow_executions e on e.id = s.execution_id"
    " where e.workflow_id = any(:wfs) and s.status = 'succeeded'"
    " union all select i.execution_id::text || ':' || i.step_id || ':' || i.item_index,"
    " extract(epoch from i.finished_at)::float8 from execution_step_items i"
    " join workflow_executions e on e.id = i.execution_id"
    " where e.workflow_id = any(:wfs) and i.status = 'succeeded'"
)


async def finished_rows(runtime: Runtime, workflow_ids: list[str]) -> dict[str, float]:
    """When each succeeded step and for-each item of these workflows' executions was finished
    (Unix time), by its Idempotency-Key."""
    async with runtime.database.system_engine.connect() as conn:
        rows = await conn.execute(_FINISHED_ROWS, {"wfs": workflow_ids})
        return {row.key: row.at for row in rows}


def called_after_finish(calls: list[Call], finished: dict[str, float]) -> list[str]:
    """Keys of succeeded steps and for-each items called again after their row was finished: a
    finished step (or item) run again. A row's `finished_at` is its transaction's start, after
    the answer of the call that finished it; the database and the recorder read the same
    clock."""
    return sorted({c.key for c in calls if c.key in finished and c.arrived_unix > finished[c.key]})


@dataclass
class LogFacts:
    """What the workers' logs say: event counts, steps that succeeded more than once (a
    finished step ran again), and stalls per execution."""

    events: dict[str, int]
    succeeded_twice: list[str]  # "<execution id>:<step id>"
    stalls: dict[str, int]  # execution id -> job_stalled events


def read_logs(outputs: list[str]) -> LogFacts:
    counts: Counter[str] = Counter()
    successes: Counter[str] = Counter()
    stalls: Counter[str] = Counter()
    for output in outputs:
        for match in _LOG_LINE.finditer(output):
            event, rest = match.groups()
            counts[event] += 1
            fields = dict(_FIELD.findall(rest))
            if event == "step_succeeded":
                successes[f"{fields.get('execution_id')}:{fields.get('step_id')}"] += 1
            elif event == "job_stalled":
                stalls[fields.get("execution_id", "")] += 1
    return LogFacts(
        events={event: counts[event] for event in LOG_EVENTS if counts[event]},
        succeeded_twice=sorted(key for key, n in successes.items() if n > 1),
        stalls=dict(stalls),
    )


# --- the bench -------------------------------------------------------------------------------


@asynccontextmanager
async def environment(
    pg_url: str, redis_url: str, args: argparse.Namespace
) -> AsyncIterator[Settings]:
    """A migrated database, its app role and a Redis key prefix of our own (bench/scratch.py)."""
    async with scratch_deployment(
        pg_url,
        redis_url,
        label="chaos",
        outbound_allowed_hosts="127.0.0.1",
        worker_concurrency=args.concurrency,
        # One session submits every execution: the rate limits stay on, far above the load.
        rate_limit_reads=100_000_000,
        rate_limit_writes=100_000_000,
        rate_limit_execute=100_000_000,
        max_running_per_org=10_000,  # the per-org cap is not what we test
        queue_lock_duration_ms=args.lock_ms,
        queue_stalled_interval_ms=args.stalled_ms,
        queue_max_stalled_count=args.max_stalled,
        reconcile_interval_seconds=args.reconcile_interval,
        reconcile_grace_seconds=args.reconcile_grace,
        shutdown_timeout_seconds=args.shutdown_timeout,
        log_level="error",
    ) as settings:
        configure_logging(settings)
        yield settings


@dataclass
class BenchWorker:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def worker_environment(settings: Settings) -> dict[str, str]:
    """`taskloom worker`, configured only by environment variables, as in production."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    return env | {
        "TASKLOOM_ENV": "test",
        "DATABASE_URL": settings.database_url or "",
        "DATABASE_APP_ROLE": settings.database_app_role,
        "REDIS_URL": settings.redis_url or "",
        "REDIS_KEY_PREFIX": settings.key_prefix,
        "OUTBOUND_ALLOWED_HOSTS": settings.outbound_allowed_hosts,
        "WORKER_CONCURRENCY": str(settings.worker_concurrency),
        # Up to the pool per process: old, new and stopping workers together must stay well
        # under PostgreSQL's max_connections (100 by default), which others may be using too.
        "DATABASE_POOL_SIZE": "10",
        "MAX_RUNNING_PER_ORG": str(settings.max_running_per_org),
        "QUEUE_LOCK_DURATION_MS": str(settings.queue_lock_duration_ms),
        "QUEUE_STALLED_INTERVAL_MS": str(settings.queue_stalled_interval_ms),
        "QUEUE_MAX_STALLED_COUNT": str(settings.queue_max_stalled_count),
        "RECONCILE_INTERVAL_SECONDS": str(settings.reconcile_interval_seconds),
        "RECONCILE_GRACE_SECONDS": str(settings.reconcile_grace_seconds),
        "SHUTDOWN_TIMEOUT_SECONDS": str(settings.shutdown_timeout_seconds),
        "LOG_LEVEL": "info",
        "PYTHONUNBUFFERED": "1",
    }


def start_worker(env: dict[str, str], log_path: Path) -> BenchWorker:
    """`taskloom worker` in the background (not waiting for it to be ready: a replacement
    starts while the others work, as a restarted pod would)."""
    with log_path.open("wb") as log:
        command = [sys.executable, "-m", "taskloom", "worker"]
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=log_path.parent)
    return BenchWorker(proc, log_path)


def kill_all(workers: list[BenchWorker]) -> None:
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(timeout=10)


@contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    """A temporary directory (Redis's data, the workers' logs), removed at the end unless
    `keep` names one to use instead."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    directory = Path(tempfile.mkdtemp(prefix="taskloom-chaos-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def submit(
    api: httpx.AsyncClient, urls: list[str], headers: dict[str, str], ids: list[str]
) -> int:
    """One execute call per URL, in order, IN_FLIGHT at a time; returns how many answers were
    not 202 (each such call is tried again: an error before the commit leaves no row)."""
    gate, errors = asyncio.Semaphore(IN_FLIGHT), 0

    async def one(n: int, url: str) -> None:
        nonlocal errors
        for _ in range(20):
            async with gate:
                response = await api.post(url, json={"input": {"n": n}}, headers=headers)
            if response.status_code == 202:
                ids.append(response.json()["execution_id"])
                return
            errors += 1
            await asyncio.sleep(0.5)
        raise RuntimeError(f"execute answered {response.status_code}: {response.text}")

    await asyncio.gather(*(one(n, url) for n, url in enumerate(urls)))
    return errors


def _ids(workflows: str | list[str]) -> list[str]:
    return [workflows] if isinstance(workflows, str) else list(workflows)


async def statuses(runtime: Runtime, workflows: str | list[str]) -> dict[str, int]:
    """Executions by status, of one workflow or several together."""
    async with runtime.database.system_engine.connect() as conn:
        rows = await conn.execute(COUNT_BY_STATUS, {"wfs": _ids(workflows)})
        return {status: int(count) for status, count in rows}


async def not_terminal(runtime: Runtime, workflows: list[str]) -> list[dict[str, Any]]:
    """The executions that never finished, with their job's state, for the report."""
    query = text(
        "select e.id, e.status, e.attempts, e.error,"
        " (select json_agg(json_build_object('step', s.step_id, 'status', s.status,"
        "  'attempts', s.attempts) order by s.position) from execution_steps s"
        "  where s.execution_id = e.id) as steps"
        " from workflow_executions e where e.workflow_id = any(:wfs)"
        " and e.status not in ('succeeded', 'failed', 'cancelled') order by e.created_at"
    )
    async with runtime.database.system_engine.connect() as conn:
        rows = (await conn.execute(query, {"wfs": workflows})).mappings().all()
    out = []
    for row in rows:
        state = await ExecutionQueue(runtime).state(row["id"])
        out.append(
            {
                **{k: row[k] for k in ("status", "attempts", "steps")},
                "id": str(row["id"]),
                "job": state,
            }
        )
    return out


async def terminal_ids(runtime: Runtime, workflows: list[str]) -> dict[str, list[dict[str, Any]]]:
    query = text(
        "select id, workflow_id, status, error from workflow_executions"
        " where workflow_id = any(:wfs) and status in ('succeeded', 'failed', 'cancelled')"
    )
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    async with runtime.database.system_engine.connect() as conn:
        for row in (await conn.execute(query, {"wfs": workflows})).mappings():
            out[row["status"]].append(
                {"id": str(row["id"]), "workflow": str(row["workflow_id"]), "error": row["error"]}
            )
    return out


async def steps_started_again(runtime: Runtime, workflows: list[str]) -> int:
    """Starts beyond the first, of steps and of for-each items (a for-each step's own row
    counts its starts too: it starts again when its execution resumes)."""
    query = text(
        "select coalesce(sum(s.attempts - 1), 0) from execution_steps s"
        " join workflow_executions e on e.id = s.execution_id where e.workflow_id = any(:wfs)"
        " and s.attempts > 0"
    )
    items = text(
        "select coalesce(sum(i.attempts - 1), 0) from execution_step_items i"
        " join workflow_executions e on e.id = i.execution_id where e.workflow_id = any(:wfs)"
        " and i.attempts > 0"
    )
    async with runtime.database.system_engine.connect() as conn:
        steps = int((await conn.execute(query, {"wfs": workflows})).scalar_one())
        return steps + int((await conn.execute(items, {"wfs": workflows})).scalar_one())


async def chaos(
    args: argparse.Namespace, settings: Settings, redis: AofRedis, logs: Path
) -> dict[str, Any]:
    recorder = CallRecorder()
    runtime = await open_runtime(settings)
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    env = worker_environment(settings)
    started = itertools.count()

    spawned: list[BenchWorker] = []

    async def spawn() -> BenchWorker:
        worker = start_worker(env, logs / f"worker-{next(started)}.log")
        spawned.append(worker)
        return worker

    ids: list[str] = []
    progress = {"terminal": 0}
    enqueue, enqueue_failures = ExecutionQueue.enqueue, 0

    async def counted_enqueue(self: ExecutionQueue, **kwargs: Any) -> None:
        nonlocal enqueue_failures
        try:
            await enqueue(self, **kwargs)
        except Exception:
            # While Redis restarts. The API would log it with its traceback and go on: the row
            # stays queued and the reconciler adds the job. Counted here instead.
            enqueue_failures += 1

    ExecutionQueue.enqueue = counted_enqueue  # type: ignore[method-assign]
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://chaos") as api,
        ):
            email, password = f"chaos-{secrets.token_hex(4)}@example.test", secrets.token_hex(16)
            account = {"display_name": "Chaos", "organization_name": "Chaos"}
            registered = await api.post(
                "/auth/register", json={"email": email, "password": password, **account}
            )
            registered.raise_for_status()
            headers = {"Authorization": f"Bearer {registered.json()['access_token']}"}
            flows = [chain_workflow(recorder, args.steps, args.step_delay)]
            wait = None if args.dag_wait in ("", "none") else args.dag_wait
            if args.dag_executions:
                flows.append(dag_workflow(recorder, args.step_delay, wait))
            if args.inline_executions:
                flows.append(inline_workflow())
            counts_by_flow = {
                "chain": args.executions,
                "dag": args.dag_executions,
                "inline": args.inline_executions,
            }
            workflow_ids: dict[str, str] = {}
            for flow in flows:
                body = {"name": f"chaos-{flow.name}", "definition": flow.definition}
                created = await api.post("/api/workflows", json=body, headers=headers)
                created.raise_for_status()
                workflow_ids[flow.name] = created.json()["id"]
            all_ids = list(workflow_ids.values())
            total = sum(counts_by_flow[f.name] for f in flows)
            # Every execution's execute URL, the workflows' evenly interleaved.
            urls = [
                url
                for _, url in sorted(
                    (n / counts_by_flow[f.name], f"/api/workflows/{workflow_ids[f.name]}/execute")
                    for f in flows
                    for n in range(counts_by_flow[f.name])
                )
            ]

            workers = [await spawn() for _ in range(args.workers)]
            monkey = Monkey(
                spawn=spawn,
                workers=workers,
                kill_every=args.kill_every,
                concurrency=args.concurrency,
                recovery_seconds=(args.lock_ms + args.stalled_ms) / 1000,
                redis=redis,
                # Mid-run: half the executions finished, workers busy with the rest.
                restart_redis_when=lambda: progress["terminal"] >= total // 2,
                redis_down_seconds=args.redis_down,
                min_ready_seconds=args.min_ready,
                rng=random.Random(args.seed),
                width=max(f.width for f in flows),
            )
            await monkey.wait_ready()
            began, began_wall = time.monotonic(), time.time()
            stop = asyncio.Event()
            monkey_task = asyncio.create_task(monkey.run(stop))
            submitting = asyncio.create_task(submit(api, urls, headers, ids))
            submitted_at: float | None = None
            counts: dict[str, int] = {}
            parked = 0  # the most executions seen `waiting` (parked by the DAG's wait) at once
            last_report = began
            try:
                while time.monotonic() - began < args.time_limit:
                    await asyncio.sleep(POLL_SECONDS)
                    if monkey_task.done():
                        monkey_task.result()  # a crash of the monkey ends the run here
                    if submitting.done() and submitted_at is None:
                        submitting.result()
                        submitted_at = time.monotonic()
                    counts = await statuses(runtime, all_ids)
                    parked = max(parked, counts.get("waiting", 0))
                    done = progress["terminal"] = sum(counts.get(s, 0) for s in TERMINAL)
                    if time.monotonic() - last_report >= 10:
                        last_report = time.monotonic()
                        print(
                            f"  {last_report - began:6.1f} s: submitted {len(ids)}, "
                            f"{json.dumps(counts, sort_keys=True)}, kills {dict(monkey.kills)}",
                            file=sys.stderr,
                            flush=True,
                        )
                    if submitted_at is not None and done >= total:
                        break
            finally:
                finished_at = time.monotonic()
                stop.set()
                await asyncio.gather(monkey_task, return_exceptions=True)
                if not submitting.done():
                    submitting.cancel()
                await asyncio.gather(submitting, return_exceptions=True)
                await monkey.stop_all()
            api_errors = submitting.result() if not submitting.cancelled() else -1
            counts = await statuses(runtime, all_ids)
            by_flow = {f.name: await statuses(runtime, workflow_ids[f.name]) for f in flows}
            lost = await not_terminal(runtime, all_ids)
            finished = await terminal_ids(runtime, all_ids)
            restarted_steps = await steps_started_again(runtime, all_ids)
            calls = recorder.snapshot()
            run_again = called_after_finish(calls, await finished_rows(runtime, all_ids))
            inline_wrong, inline_run = (
                await inline_outcome(runtime, workflow_ids["inline"])
                if "inline" in workflow_ids
                else (0, 0)
            )
    finally:
        kill_all(spawned)  # after an error: no worker may outlive the run
        await runtime.close()
        recorder.close()

    if args.keep is not None:  # for a post-mortem next to the workers' logs
        record = {
            "began_monotonic": began,
            "began_unix": began_wall,
            "calls": [asdict(c) for c in calls],
            "interruptions": [
                asdict(h) | {"end": min(h.end, finished_at)} for h in monkey.interruptions
            ],
            "workers": {w.proc.pid: w.log_path.name for w in monkey.all_workers},
        }
        (args.keep / "calls.json").write_text(json.dumps(record))
    facts = read_logs([w.output() for w in monkey.all_workers])
    failed_stalls = Counter(facts.stalls.get(e["id"], 0) for e in finished.get("failed", []))
    duplicates = judge(calls, monkey.interruptions, finished_at)
    succeeded_by_flow: dict[str, list[str]] = defaultdict(list)
    for execution in finished.get("succeeded", []):
        succeeded_by_flow[execution["workflow"]].append(execution["id"])
    missing = [
        key
        for flow in flows
        for key in missing_calls(calls, succeeded_by_flow[workflow_ids[flow.name]], flow.keys)
    ]
    seconds = finished_at - began
    hits = monkey.interruptions
    return {
        "executions": total,
        "by_workflow": {
            f.name: {"executions": counts_by_flow[f.name], **by_flow[f.name]} for f in flows
        },
        "submitted": len(ids),
        "api_errors": api_errors,
        "enqueue_failures": enqueue_failures,
        "rows": sum(counts.values()),
        "succeeded": counts.get("succeeded", 0),
        "failed": counts.get("failed", 0),
        "cancelled": counts.get("cancelled", 0),
        "lost": len(lost),
        "waiting_max": parked,
        "step_calls": duplicates.calls,
        "step_calls_expected": sum(counts_by_flow[f.name] * len(f.keys) for f in flows),
        "steps_missing_a_call": len(missing),
        "duplicated_calls": duplicates.duplicated,
        "duplicated_concurrent": duplicates.concurrent,
        "duplicates_explained": duplicates.explained,
        "duplicates_unexplained": duplicates.unexplained_count,
        "steps_started_again": restarted_steps,
        "kills": dict(monkey.kills),
        "kill_interval_mean_s": round(
            statistics.mean(
                b - a
                for a, b in itertools.pairwise(
                    h.start for h in hits if h.kind in ("SIGKILL", "SIGTERM")
                )
            ),
            1,
        )
        if sum(monkey.kills.values()) > 1
        else None,
        "worker_exits_unasked": sum(1 for h in hits if h.kind == "worker_exit"),
        "workers_started": len(monkey.all_workers),
        "worker_start_seconds_median": round(statistics.median(monkey.start_seconds() or [0]), 1),
        "sigterm_exits": len(monkey.sigterm_exits),
        "sigterm_exit_seconds_max": None
        if None in monkey.sigterm_exits
        else round(max((s for s in monkey.sigterm_exits if s is not None), default=0), 2),
        "sigterm_exit_bound_s": args.shutdown_timeout + 2,
        "sigterm_exits_over_bound": sum(
            1 for s in monkey.sigterm_exits if s is None or s > args.shutdown_timeout + 2
        ),
        "redis_restart": None
        if monkey.redis_restart is None
        else {
            "at_s": round(monkey.redis_restart["stopped"] - began, 1),
            "down_s": round(monkey.redis_restart["up"] - monkey.redis_restart["stopped"], 2),
            "jobs_before": monkey.redis_restart["jobs_before"],
            "jobs_after": monkey.redis_restart["jobs_after"],
        },
        "worker_log_events": facts.events,
        "finished_steps_run_again": len(facts.succeeded_twice),
        "finished_called_again": len(run_again),
        "inline_wrong": inline_wrong,
        "inline_run_inline": inline_run,
        "failed_by_stalls": dict(sorted(failed_stalls.items())),
        "began_utc": datetime.fromtimestamp(began_wall, UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "submit_seconds": round((submitted_at or finished_at) - began, 1),
        "executions_per_s": round(counts.get("succeeded", 0) / seconds, 1),
        "settings": {
            "workers": args.workers,
            "concurrency": args.concurrency,
            "steps": args.steps,
            "dag_executions": args.dag_executions,
            "inline_executions": args.inline_executions,
            "dag_wait": wait,
            "step_delay_s": args.step_delay,
            "kill_every_s": args.kill_every,
            "lock_ms": args.lock_ms,
            "stalled_ms": args.stalled_ms,
            "max_stalled": args.max_stalled,
            "shutdown_timeout_s": args.shutdown_timeout,
            "reconcile_interval_s": args.reconcile_interval,
            "reconcile_grace_s": args.reconcile_grace,
            "redis_down_s": args.redis_down,
            "appendfsync": args.appendfsync,
            "seed": args.seed,
        },
        "examples": {
            "lost": lost[:10],
            "failed": finished.get("failed", [])[:10],
            "unexplained": duplicates.unexplained[:10],
            "missing": missing[:10],
            "finished_steps_run_again": facts.succeeded_twice[:10],
            "finished_called_again": run_again[:10],
        },
        "interruptions": [
            {
                **asdict(h),
                "start": round(h.start - began, 2),
                "end": round(min(h.end, finished_at) - began, 2),
            }
            for h in hits
        ],
    }


def report(result: dict[str, Any]) -> None:
    restart = result["redis_restart"] or {}
    explained = sum(result["duplicates_explained"].values())
    print()
    print(
        f"{'submitted':<34}{result['submitted']:>8}   (API errors retried: {result['api_errors']}, "
        f"enqueues failed: {result['enqueue_failures']})"
    )
    print(f"{'succeeded':<34}{result['succeeded']:>8}   {result['by_workflow']}")
    print(
        f"{'failed':<34}{result['failed']:>8}   "
        f"(by job_stalled events seen for it: {result['failed_by_stalls']})"
    )
    print(f"{'cancelled':<34}{result['cancelled']:>8}")
    print(f"{'lost (never terminal)':<34}{result['lost']:>8}")
    print(f"{'most waiting (parked) at once':<34}{result['waiting_max']:>8}")
    expected = result["step_calls_expected"]
    print(f"{'step calls (expected)':<34}{result['step_calls']:>8}   ({expected})")
    print(f"{'steps of succeeded, never called':<34}{result['steps_missing_a_call']:>8}")
    print(
        f"{'duplicated step calls':<34}{result['duplicated_calls']:>8}   "
        f"(overlapping the previous call: {result['duplicated_concurrent']})"
    )
    print(
        f"{'  explained by an interruption':<34}{explained:>8}   {result['duplicates_explained']}"
    )
    print(f"{'  unexplained':<34}{result['duplicates_unexplained']:>8}")
    print(f"{'finished steps run again (logs)':<34}{result['finished_steps_run_again']:>8}")
    print(
        f"{'finished steps/items called again':<34}{result['finished_called_again']:>8}"
        "   (a call after the row's finished_at)"
    )
    print(f"{'steps started again (DB attempts)':<34}{result['steps_started_again']:>8}")
    print(
        f"{'inline: wrong or not succeeded':<34}{result['inline_wrong']:>8}"
        f"   ({result['inline_run_inline']} of {result['settings']['inline_executions']}"
        " finished inline, without a claim)"
    )
    print(
        f"{'kills':<34}{sum(result['kills'].values()):>8}   {result['kills']}, "
        f"every {result['kill_interval_mean_s']} s on average, "
        f"workers started {result['workers_started']} (spawn to ready: median "
        f"{result['worker_start_seconds_median']} s), exited unasked "
        f"{result['worker_exits_unasked']}"
    )
    slowest = result["sigterm_exit_seconds_max"]
    print(
        f"{'SIGTERMed workers, slowest exit':<34}{'SIGKILLed' if slowest is None else slowest:>8}"
        f"   s after SIGTERM, of {result['sigterm_exits']} (mid-run and at the end; bound "
        f"SHUTDOWN_TIMEOUT_SECONDS + 2 = {result['sigterm_exit_bound_s']:g} s, over it: "
        f"{result['sigterm_exits_over_bound']})"
    )
    print(
        f"{'Redis restart':<34}{'':>8}   at {restart.get('at_s')} s, "
        f"down {restart.get('down_s')} s, "
        f"jobs in Redis {restart.get('jobs_before')} -> {restart.get('jobs_after')}"
    )
    print(f"{'worker log events':<34}{'':>8}   {result['worker_log_events']}")
    print(
        f"{'time':<34}{result['seconds']:>8}   s (all submitted after {result['submit_seconds']} s)"
    )
    print(f"{'throughput':<34}{result['executions_per_s']:>8}   succeeded executions/s")
    for name, examples in result["examples"].items():
        if examples:
            print(f"{name}: {json.dumps(examples, default=str)[:3000]}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Executions under worker kills and a Redis restart"
    )
    parser.add_argument("--executions", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes at any time")
    parser.add_argument("--kill-every", type=float, default=2.0, help="seconds between kills")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL")
        or os.environ.get("BENCH_DATABASE_URL")
        or DEFAULT_DATABASE_URL,
        help="a PostgreSQL server where databases and roles may be created",
    )
    parser.add_argument("--concurrency", type=int, default=10, help="WORKER_CONCURRENCY")
    parser.add_argument("--steps", type=int, default=3, help="http steps per chain execution")
    parser.add_argument(
        "--dag-executions",
        type=int,
        default=300,
        help="executions of the DAG workflow (fan-out, for-each, wait, join), besides the chain's",
    )
    parser.add_argument(
        "--inline-executions",
        type=int,
        default=300,
        help="executions of a one-step transform (run inline, ADR 0018), besides the others'",
    )
    parser.add_argument(
        "--dag-wait", default="1s", help="the DAG's wait step's duration ('none': no wait step)"
    )
    parser.add_argument("--step-delay", type=float, default=0.03, help="server delay per call, s")
    parser.add_argument("--lock-ms", type=int, default=3_000, help="QUEUE_LOCK_DURATION_MS")
    parser.add_argument("--stalled-ms", type=int, default=1_000, help="QUEUE_STALLED_INTERVAL_MS")
    parser.add_argument(
        "--max-stalled", type=int, default=1, help="QUEUE_MAX_STALLED_COUNT (default: Taskloom's)"
    )
    parser.add_argument("--shutdown-timeout", type=float, default=0.1, help="after SIGTERM, s")
    parser.add_argument("--reconcile-interval", type=float, default=2.0, help="seconds")
    parser.add_argument("--reconcile-grace", type=float, default=10.0, help="seconds")
    parser.add_argument("--redis-down", type=float, default=1.0, help="seconds Redis stays down")
    parser.add_argument("--appendfsync", choices=("everysec", "always"), default="everysec")
    parser.add_argument(
        "--min-ready", type=float, default=1.0, help="a victim has taken jobs this long, s"
    )
    parser.add_argument("--seed", type=int, default=None, help="victim choice")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and AOF in this dir")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1_000_000)

    async def run() -> dict[str, Any]:
        with workdir(args.keep) as directory:
            (directory / "redis").mkdir()
            (directory / "logs").mkdir()
            redis = AofRedis(directory / "redis", fsync=args.appendfsync)
            try:
                async with environment(args.database_url, redis.url, args) as settings:
                    return await chaos(args, settings, redis, directory / "logs")
            finally:
                redis.close()

    result = asyncio.run(run())
    report(result)
    print("RESULT " + json.dumps(result, sort_keys=True, default=str), flush=True)
    ok = (
        result["lost"] == 0
        and result["failed"] == 0
        and result["cancelled"] == 0
        and result["duplicates_unexplained"] == 0
        and result["steps_missing_a_call"] == 0
        and result["finished_steps_run_again"] == 0
        and result["finished_called_again"] == 0
        and result["inline_wrong"] == 0
        and result["submitted"] == result["executions"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
