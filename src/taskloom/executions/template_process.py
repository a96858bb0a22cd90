"""Renders step arguments for the worker without letting a template freeze or exhaust it
(docs/adr/0005-template-sandbox-budget.md).

Cheap templates (`templating.is_cheap`: lookups, literals, comparisons, a few linear filters;
nearly every real one) render in-process, their cost bounded by their size. Any other template
(a loop, a call, a multiplying operator...) is sent with its scope to a render process
(`template_child.py`) whose address space is capped at `TEMPLATE_RENDER_MEMORY_MB`, and which is
killed when the render takes longer than `TEMPLATE_RENDER_TIMEOUT_SECONDS`: the worker's event
loop, which every organization's executions share, only waits on a socket. A thread could not
be killed, and counting operations in-process cannot interrupt a single C call such as
`'{:>2000000000}'.format(1)`.

Render processes are forked by multiprocessing's fork server, which imports Jinja2 once, so a
new one is ready in milliseconds. Each render in flight has a process of its own (at most the
worker's concurrency), so one organization's slow template never makes another's wait; a few
stay idle for the next render, and one that failed as too expensive is killed, never reused.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import socket
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from taskloom.config import Settings
from taskloom.executions import template_child
from taskloom.executions.templating import (
    TemplateProblem,
    TemplateTooExpensive,
    is_cheap,
    names_used,
    render,
)

log = structlog.get_logger("taskloom.templates")

START_SECONDS = 30.0  # a process's start-up, not counted against the render (ms, normally)
IDLE_PROCESSES = 4  # kept between renders; the others exit when their render is done
MAX_ANSWER_BYTES = 8 * 1_048_576  # a longer answer is too expensive (1M chars per string)
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload([template_child.__name__])


class _Child:
    """One render process and the worker's end of its socket."""

    def __init__(
        self, process: BaseProcess, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.process, self.reader, self.writer = process, reader, writer

    async def ask(self, request: bytes) -> bytes:
        self.writer.write(request)
        await self.writer.drain()
        answer = await self.reader.readline()  # ValueError past MAX_ANSWER_BYTES
        if not answer.endswith(b"\n"):
            raise ConnectionError("the template render process exited")
        return answer

    def close(self, *, kill: bool) -> None:
        if kill and self.process.exitcode is None:
            self.process.kill()
        self.writer.close()  # an idle process reads the end of its input and exits

    def reap(self) -> None:
        self.process.join(10)
        if self.process.exitcode is not None:
            self.process.close()


class TemplateRenderer:
    """Renders step arguments within a deadline and a memory limit; one per worker process."""

    def __init__(self, *, timeout_seconds: float, memory_bytes: int) -> None:
        self.timeout_seconds = timeout_seconds
        self.memory_bytes = memory_bytes
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._reaping: set[asyncio.Future[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateRenderer:
        return cls(
            timeout_seconds=settings.template_render_timeout_seconds,
            memory_bytes=settings.template_render_memory_mb * 1_048_576,
        )

    @property
    def processes(self) -> int:
        """Render processes alive (idle or busy)."""
        return len(self._idle) + len(self._busy)

    async def warm_up(self) -> None:
        """Start the fork server and one idle render process ahead of the first render. On
        failure renders try again (and fail retryably with OSError if they cannot either)."""
        if self._idle:
            return
        try:
            self._idle.append(await self._start())
        except OSError as error:
            log.error("template_render_process_unavailable", error=repr(error))

    async def render(self, value: Any, scope: dict[str, Any], *, path: str) -> Any:
        """Render every template in `value`; raise TemplateProblem (TemplateTooExpensive when
        the render would take too long or too much memory)."""
        if is_cheap(value):
            return render(value, scope, path)
        used = names_used(value)
        request = {"value": value, "scope": {k: v for k, v in scope.items() if k in used}}
        line = json.dumps({**request, "path": path}).encode() + b"\n"
        child = await self._checkout()
        try:
            answer = await asyncio.wait_for(child.ask(line), self.timeout_seconds)
        except TimeoutError:
            self._discard(child)
            log.warning("template_render_timed_out", path=path, timeout_s=self.timeout_seconds)
            raise TemplateTooExpensive(
                path, f"took longer than {self.timeout_seconds:g} s to render"
            ) from None
        except (ConnectionError, ValueError):  # died (out of memory) or answered too much
            self._discard(child)
            raise TemplateTooExpensive(path, "too expensive to render") from None
        except BaseException:  # cancelled (e.g. a shutdown's hand-back) mid-render
            self._discard(child)
            raise
        return self._answered(child, json.loads(answer))

    def _answered(self, child: _Child, answer: dict[str, Any]) -> Any:
        error = answer.get("error")
        if error is None:
            self._checkin(child)
            return answer["value"]
        if error["code"] == TemplateTooExpensive.code:
            self._discard(child)  # its heap may have grown: the next render starts afresh
            raise TemplateTooExpensive(error["path"], error["message"])
        self._checkin(child)
        raise TemplateProblem(error["path"], error["message"])

    async def _checkout(self) -> _Child:
        child = self._idle.pop() if self._idle else await self._start()
        self._busy.add(child)
        return child

    def _checkin(self, child: _Child) -> None:
        self._busy.discard(child)
        if len(self._idle) < IDLE_PROCESSES:
            self._idle.append(child)
        else:
            self._close(child, kill=False)

    def _discard(self, child: _Child) -> None:
        self._busy.discard(child)
        self._close(child, kill=True)

    def _close(self, child: _Child, *, kill: bool) -> None:
        child.close(kill=kill)
        reaped = asyncio.get_running_loop().run_in_executor(None, child.reap)
        self._reaping.add(reaped)
        reaped.add_done_callback(self._reaping.discard)

    async def _start(self) -> _Child:
        ours, theirs = socket.socketpair()
        try:
            process = _FORKS.Process(
                target=template_child.serve,
                args=(theirs, self.memory_bytes, math.ceil(self.timeout_seconds) + 1),
                name="taskloom-template",
                daemon=True,
            )
            # Blocking: the first call also starts the fork server (an import of Jinja2).
            await asyncio.to_thread(process.start)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours, limit=MAX_ANSWER_BYTES)
        child = _Child(process, reader, writer)
        try:
            ready = await asyncio.wait_for(reader.readline(), START_SECONDS)
        except BaseException:
            self._close(child, kill=True)
            raise
        if ready != template_child.READY:
            self._close(child, kill=True)
            raise OSError("a template render process did not start")
        return child

    async def aclose(self) -> None:
        """Stop every render process (a render still running fails)."""
        for child in [*self._idle, *self._busy]:
            self._close(child, kill=True)
        self._idle.clear()
        self._busy.clear()
        if self._reaping:
            await asyncio.wait(set(self._reaping), timeout=15)
