"""The body of a template render process, forked by `template_process.TemplateRenderer` from a
fork server that has this module (and Jinja2) imported already.

It reads one JSON request per line from its socket, `{"value", "scope", "path"}`, renders it
with `templating.render` and answers one JSON line: `{"value": ...}` or
`{"error": {"code", "path", "message"}}`. Its address space is capped first, so a template that
allocates too much fails with MemoryError here instead of exhausting the worker's host; one that
runs too long is killed by the worker. JSON both ways: the worker never unpickles what a process
running tenants' templates sends it.
"""

from __future__ import annotations

import json
import math
import os
import resource
import socket
from typing import Any

from taskloom.executions.templating import TemplateProblem, TemplateTooExpensive, render

NICENESS = 5  # below the worker's own event loop when CPUs are short
READY = b"ready\n"


def serve(connection: socket.socket, memory_bytes: int, cpu_seconds: int) -> None:
    """Answer requests until the worker closes the socket (or kills this process)."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(NICENESS)
    _silence()
    connection.sendall(READY)
    with connection, connection.makefile("rb") as requests, connection.makefile("wb") as answers:
        for line in requests:
            _limit_cpu(cpu_seconds)
            answers.write(_answer(line).encode() + b"\n")
            answers.flush()


def _limit_cpu(seconds: int) -> None:
    """The kernel ends this process (SIGXCPU) once this render has used about `seconds` of
    CPU: the worker kills it sooner, but a worker that died (SIGKILL, out of memory) cannot,
    and its fork server's exit does not stop a render already running."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + seconds
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _answer(line: bytes) -> str:
    request = json.loads(line)
    try:
        value = render(request["value"], request["scope"], request["path"])
        return json.dumps({"value": value})
    except TemplateProblem as problem:
        return _error(problem.code, problem.path, problem.message)
    except (MemoryError, RecursionError):  # e.g. while encoding the answer
        return _error(TemplateTooExpensive.code, request["path"], "too expensive to render")
    except Exception as exc:  # whatever else a template raises is its own error
        return _error(TemplateProblem.code, request["path"], f"template error: {exc!r}")


def _silence() -> None:
    """Nothing a template does reaches the worker's log (which this process's stdout and
    stderr are, inherited): a traceback would quote the template and its data."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _error(code: str, path: str, message: str) -> str:
    body: dict[str, Any] = {"code": code, "path": path, "message": message}
    return json.dumps({"error": body})
