"""An execution's live events as Server-Sent Events: what `GET /api/executions/{id}/events`
(bearer) and `GET /ui/executions/{id}/events` (the cookie session) answer.

A stream reads the execution's Redis Stream (executions/live.py). It is authorized when it
opens, with one short read-only query, exactly as `GET /api/executions/{id}` is (the viewer role,
the execution visible to the caller's organization, else 404), and holds no database connection
while open. Every LIVE_STREAM_RECHECK_SECONDS it authorizes again (a revoked key or session, a
removed membership or a role below viewer close it) and looks at the execution's status, so an
end whose event was lost still closes it. `Last-Event-ID` (or `?last_event_id=`) resumes after
that entry; without it the stream starts from the beginning of what is kept.

Bounds: at most LIVE_STREAMS_PER_USER open streams per person across all API processes (a Redis
sorted set per person, of stream ids scored by expiry and refreshed at each recheck, so a crashed
process's streams expire); the 6th gets 429 `too_many_streams`. The streams of a process share
one Redis connection: one reader task multiplexes them with a blocking XREAD over every watched
key, so many streams cannot exhaust the app's pool. A `: ping` comment goes out every
LIVE_STREAM_HEARTBEAT_SECONDS. The process's stop (Runtime.stopping) ends every stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import FastAPI, Request
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from taskloom.auth.deps import get_runtime, viewer_reads
from taskloom.errors import BadRequest, Busy, NotFound, RateLimited
from taskloom.executions.live import TERMINAL_STATUSES, is_end, stream_key
from taskloom.observability.requests import ANSWERED
from taskloom.redis import create_redis
from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.executions.streams")

BLOCK_MS = 10_000  # the reader's XREAD blocks at most this long
READ_COUNT = 200  # entries per key per XREAD (a long history is read in several)
MAX_PENDING = 2_000  # events read but not yet written to a slow client: past it, it is closed
REPLAY_COUNT = 500  # entries per XRANGE when replaying a finished execution
_ENTRY_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
EntryId = tuple[int, int]

_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class TooManyStreams(RateLimited):
    """The person already has LIVE_STREAMS_PER_USER event streams open."""

    code = "too_many_streams"


@dataclass(frozen=True)
class Access:
    """What an authorization found: whose stream it is and the execution's status."""

    user_id: uuid.UUID
    status: str


Authorize = Callable[[], Awaitable[Access]]


async def execution_access(request: Request, token: str, execution_id: uuid.UUID) -> Access:
    """`GET /api/executions/{id}`'s authorization in one short read-only transaction: the
    token (rate-limited, revocation-aware), the viewer role, and the execution visible to the
    caller's organization (row-level security), else NotFound."""
    ctx = await viewer_reads(request, token)
    async with ctx.reads() as reads:
        status = await reads.fetchval(
            "select status from workflow_executions where id = $1", execution_id
        )
    if status is None:
        raise NotFound("execution not found")
    return Access(user_id=ctx.principal.user_id, status=str(status))


def parse_entry_id(value: str | None) -> EntryId | None:
    """A stream entry id (`<ms>-<seq>`) from Last-Event-ID, or BadRequest."""
    if value is None or not value.strip():
        return None
    found = _ENTRY_ID.match(value.strip())
    if found is None:
        raise BadRequest("Last-Event-ID must be an event id this stream sent (<ms>-<seq>)")
    return int(found.group(1)), int(found.group(2))


def _entry_id(value: str) -> EntryId:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq)


def _text(entry: EntryId) -> str:
    return f"{entry[0]}-{entry[1]}"


def event_text(entry_id: str | None, kind: str, data: str) -> str:
    """One Server-Sent Event (`data` is compact JSON: one line)."""
    head = f"id: {entry_id}\n" if entry_id is not None else ""
    return f"{head}event: {kind}\ndata: {data}\n\n"


# --- the per-process reader ----------------------------------------------------------------------


@dataclass(eq=False)
class Subscription:
    """One open stream's place in its execution's Redis Stream and what was read for it."""

    key: str
    last: EntryId
    pending: deque[tuple[str, str, str]] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    overflow: bool = False

    def deliver(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        for entry_id, fields in entries:
            parsed = _entry_id(entry_id)
            if parsed <= self.last:
                continue  # another stream of the same execution was further behind
            if len(self.pending) >= MAX_PENDING:
                self.overflow = True  # a client this slow reconnects with Last-Event-ID
                break
            self.pending.append((entry_id, fields.get("event", ""), fields.get("data", "{}")))
            self.last = parsed
        self.ready.set()


class LiveReader:
    """One task and one Redis connection per API process, reading every open stream's key with
    a blocking XREAD from the furthest-behind position, and handing each stream its entries.
    A new stream interrupts the wait so that its key is read at once."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    def subscribe(self, key: str, after: EntryId) -> Subscription:
        subscription = Subscription(key=key, last=after)
        self._subscriptions.setdefault(key, set()).add(subscription)
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        found = self._subscriptions.get(subscription.key)
        if found is not None:
            found.discard(subscription)
            if not found:
                del self._subscriptions[subscription.key]

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self._subscriptions.values())

    async def close(self) -> None:
        self.closed.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        settings = self._runtime.settings
        client = create_redis(settings, purpose="live-reader", socket_timeout=BLOCK_MS / 1000 + 10)
        try:
            while not self.closed.is_set():
                self._changed.clear()
                if not self._subscriptions:
                    await self._changed.wait()
                    continue
                streams: dict[Any, Any] = {
                    key: _text(min(s.last for s in subscriptions))
                    for key, subscriptions in self._subscriptions.items()
                }
                read = asyncio.ensure_future(
                    client.xread(streams, count=READ_COUNT, block=BLOCK_MS)
                )
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait({read, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                    if not read.done():  # a new stream (or the close): read again, reconnected
                        read.cancel()
                        with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                            await read
                if read.cancelled():
                    continue
                try:
                    found: Any = read.result()
                except (RedisError, OSError) as error:
                    log.warning("live_reader_failed", error=type(error).__name__)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.closed.wait(), 1.0)
                    continue
                # RESP2 answers a list of [key, entries], RESP3 a mapping.
                pairs = found.items() if isinstance(found, dict) else (found or [])
                for key, entries in pairs:
                    start = _entry_id(streams[key])
                    for subscription in list(self._subscriptions.get(key, ())):
                        # One that joined behind this read's start (while it ran) must not skip
                        # what lies between: it gets it from the next read.
                        if subscription.last >= start:
                            subscription.deliver(entries)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()


def reader_of(request: Request) -> LiveReader:
    """This process's reader (made on first use; closed with the app, `close_reader`)."""
    found = getattr(request.app.state, "live_reader", None)
    if found is None:
        found = request.app.state.live_reader = LiveReader(get_runtime(request))
    assert isinstance(found, LiveReader)
    return found


async def close_reader(app: FastAPI) -> None:
    found = getattr(app.state, "live_reader", None)
    if isinstance(found, LiveReader):
        await found.close()


# --- the per-person limit ----------------------------------------------------------------------


class Slots:
    """A person's open streams across every API process: a sorted set of stream ids scored by
    when they expire unless refreshed (each recheck refreshes them)."""

    def __init__(self, runtime: Runtime, user_id: uuid.UUID) -> None:
        self._redis: Redis = runtime.redis
        self._key = runtime.keys("live-streams", str(user_id))
        self._limit = runtime.settings.live_streams_per_user
        self._ttl = runtime.settings.live_stream_recheck_seconds * 2 + 15
        self.id = uuid.uuid4().hex

    async def take(self) -> bool:
        now = time.time()
        taken = await self._redis.eval(
            _TAKE_SLOT,
            1,
            self._key,
            now,
            now + self._ttl,
            self.id,
            self._limit,
            int(self._ttl) + 1,
        )
        return bool(taken)

    async def refresh(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.zadd(self._key, {self.id: time.time() + self._ttl}, xx=True)

    async def release(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.zrem(self._key, self.id)


# --- the response --------------------------------------------------------------------------------


async def open_stream(
    request: Request,
    execution_id: uuid.UUID,
    authorize: Authorize,
    last_event_id: str | None,
) -> StreamingResponse:
    """Authorize (DomainError otherwise: 404 for an execution the caller cannot see), take one
    of the person's stream slots (TooManyStreams), and answer with the event stream."""
    after = parse_entry_id(last_event_id)
    access = await authorize()
    runtime = get_runtime(request)
    slots = Slots(runtime, access.user_id)
    try:
        taken = await slots.take()
    except (RedisError, OSError):
        raise Busy(
            "live events are unavailable right now", code="live_events_unavailable", retry_after=5
        ) from None
    if not taken:
        raise TooManyStreams(
            f"at most {runtime.settings.live_streams_per_user} event streams may be open at "
            "once per person; close one first",
            retry_after=int(runtime.settings.live_stream_recheck_seconds),
        )
    stream = _Stream(
        runtime=runtime,
        reader=reader_of(request),
        key=stream_key(runtime.keys, execution_id),
        authorize=authorize,
        status=access.status,
        after=after or (0, 0),
        slots=slots,
    )
    return EventStreamResponse(stream)


@dataclass
class _Stream:
    runtime: Runtime
    reader: LiveReader
    key: str
    authorize: Authorize
    status: str
    after: EntryId
    slots: Slots

    async def run(self, write: Callable[[str], Awaitable[None]], gone: asyncio.Event) -> None:
        """Write the events until the execution ends, the caller loses access, the client
        goes, or the process stops; the slot is given back whatever ends it."""
        try:
            await write("retry: 2000\n\n")
            if self.status in TERMINAL_STATUSES:
                await self._replay(write, self.after)
                return
            await self._follow(write, gone)
        except RedisError as error:  # the client reconnects with Last-Event-ID
            log.warning("live_stream_failed", error=type(error).__name__)
        finally:
            await asyncio.shield(self.slots.release())

    async def _follow(self, write: Callable[[str], Awaitable[None]], gone: asyncio.Event) -> None:
        settings = self.runtime.settings
        subscription = self.reader.subscribe(self.key, self.after)
        try:
            now = time.monotonic()
            next_ping = now + settings.live_stream_heartbeat_seconds
            next_check = now + settings.live_stream_recheck_seconds
            stops = (self.runtime.stopping, self.reader.closed, gone)
            while not any(event.is_set() for event in stops):
                wait = max(0.0, min(next_ping, next_check) - time.monotonic())
                await _first(subscription.ready, *stops, seconds=wait)
                subscription.ready.clear()
                while subscription.pending:
                    entry_id, kind, data = subscription.pending.popleft()
                    await write(event_text(entry_id, kind, data))
                    if kind == "execution" and is_end(kind, json.loads(data)):
                        return
                if subscription.overflow:
                    return  # the client reconnects with Last-Event-ID and reads the rest
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + settings.live_stream_recheck_seconds
                    try:
                        access = await self.authorize()
                    except Exception as refused:  # revoked, removed, demoted, or unknown
                        log.info("live_stream_closed", reason=type(refused).__name__)
                        return
                    await self.slots.refresh()
                    if access.status in TERMINAL_STATUSES:  # its end event was lost
                        await self._replay(write, subscription.last, ended=access.status)
                        return
                if now >= next_ping:
                    next_ping = now + settings.live_stream_heartbeat_seconds
                    await write(": ping\n\n")
        finally:
            self.reader.unsubscribe(subscription)

    async def _replay(
        self, write: Callable[[str], Awaitable[None]], after: EntryId, ended: str | None = None
    ) -> None:
        """A finished execution: what is kept after `after`, then its end event (built from
        the row when the stream has none: expired, or lost)."""
        redis = self.runtime.redis
        start = f"({_text(after)}"
        while True:
            entries: Any = await redis.xrange(self.key, min=start, max="+", count=REPLAY_COUNT)
            for entry_id, fields in entries:
                kind, data = fields.get("event", ""), fields.get("data", "{}")
                await write(event_text(entry_id, kind, data))
                if is_end(kind, json.loads(data)):
                    return
            if len(entries) < REPLAY_COUNT:
                break
            start = f"({entries[-1][0]}"
        status = ended or self.status
        await write(event_text(None, "execution", json.dumps({"status": status})))


async def _first(*events: asyncio.Event, seconds: float) -> None:
    """Wait until any of `events` is set, or `seconds` have passed."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class EventStreamResponse(StreamingResponse):
    """`text/event-stream`, written by the stream itself: it ends when the stream does, and
    a client that goes away (`http.disconnect`) ends the stream at once."""

    def __init__(self, stream: _Stream) -> None:
        super().__init__(
            _nothing(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"},
        )
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def write(text: str) -> None:
            await send({"type": "http.response.body", "body": text.encode(), "more_body": True})

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            scope[ANSWERED] = time.perf_counter()  # its metrics time it to here, not to its end
            with contextlib.suppress(OSError):  # the client went away mid-write
                await self._stream.run(write, gone)
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()


async def _nothing() -> Any:
    return
    yield  # an async generator that yields nothing: the body is written by `__call__`
