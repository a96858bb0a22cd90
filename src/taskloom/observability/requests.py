"""The outermost middleware: every HTTP request gets its id, its metrics and its access log
line, with one wrapper around `send` for all three (plain ASGI, so streamed bodies pass through
and error responses, 413s included, are counted and carry the id).

- X-Request-ID: a well-formed incoming id is kept, otherwise one is made; it is bound into the
  log context for the request and returned on the response (observability/request_id.py).
- Metrics and the access log line: recorded once the request has been answered, with the
  status sent, or 500 when none was (observability/http_metrics.py). A long-lived response (an
  event stream, open for minutes) puts the time its response started in `scope[ANSWERED]`
  (time.perf_counter) and is timed to it: its length is the client's choice, and would otherwise
  read as slow requests against the latency SLO.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskloom.observability.http_metrics import HttpMetrics
from taskloom.observability.request_id import HEADER, accept_or_make, bind, unbind

_HEADER = HEADER.encode("latin-1")
ANSWERED = "taskloom.answered"


class ObservedRequests:
    def __init__(self, app: ASGIApp, *, metrics: bool = True, log_requests: bool = True) -> None:
        self.app = app
        # Without metrics (a benchmark's baseline), neither metrics nor access log lines.
        self.metrics = HttpMetrics(log_requests=log_requests) if metrics else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == _HEADER:
                incoming = value.decode("latin-1")
                break
        request_id = accept_or_make(incoming)
        returned = (_HEADER, request_id.encode("latin-1"))
        token = bind(request_id)
        started = time.perf_counter()
        status = 500  # if the app dies before answering, the client sees a 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [item for item in message.get("headers", ()) if item[0] != _HEADER]
                headers.append(returned)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            if self.metrics is not None:
                ended = scope.get(ANSWERED) or time.perf_counter()
                self.metrics.record(scope, status, ended - started, ended)
            unbind(token)
