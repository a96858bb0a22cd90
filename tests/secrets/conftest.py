"""A local HTTP server that records every request it receives (method, path, headers, body)
and echoes it back as JSON, or redirects (`/redirect?to=<url>`): the allowed host of the
secrets tests, and the host a member tries to send a secret to."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class EchoServer:
    base: str
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def requests_to(self, prefix: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path.startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    server_state: EchoServer

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Received(self.command, self.path, dict(self.headers.items()), body)
        with self.server_state.lock:
            self.server_state.received.append(seen)
        if self.path.startswith("/redirect?to="):  # `/redirect?to=<url>`: a 307 to the URL
            self.send_response(307)
            self.send_header("location", unquote(self.path.removeprefix("/redirect?to=")))
            self.send_header("content-length", "0")
            self.end_headers()
            return
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode(errors="replace")
        echo = {
            "method": self.command,
            "path": self.path,
            "authorization": self.headers.get("authorization"),
            "body": parsed,
        }
        data = json.dumps(echo).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _handle


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    state = EchoServer(base="")
    handler = type("Handler", (_Handler,), {"server_state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
