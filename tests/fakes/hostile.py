"""An HTTP server on 127.0.0.1 that answers every request in one hostile (or plain) way, and
counts what it did: how many requests arrived, how many body bytes the client accepted, whether
the client read the whole body, when the client hung up.

    with HostileServer("drip") as server:      # 200, then one body byte every 0.5 s, for ever
    with HostileServer("huge") as server:      # 200 with a 10 MiB JSON body
    with HostileServer("redirect", location=other.url) as server:   # 307 to `location`
    with HostileServer("ok") as server:        # 200 {"ok": true}
    with HostileServer("gzip_bomb") as server: # 200, 50 KiB of gzip inflating to 50 MiB
    with HostileServer("bad_gzip") as server:  # 200, "gzip" that is not
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self

Mode = Literal["drip", "huge", "redirect", "ok", "gzip_bomb", "bad_gzip"]
HUGE_BYTES = 10 * 1024 * 1024
BOMB_BYTES = 50 * 1024 * 1024  # once inflated
DRIP_INTERVAL = 0.5
_CHUNK = 16 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up mid-answer is what these tests provoke


class HostileServer:
    def __init__(self, mode: Mode, *, location: str = "", status: int = 307) -> None:
        self.mode, self.location, self.status = mode, location, status
        self.requests = 0
        self.body_bytes_sent = 0  # accepted by the client's socket (its buffers included)
        self.body_completed = False
        self.hung_up_at: float | None = None  # time.monotonic() when a write failed
        self.first_request_at: float | None = None
        self._stop = threading.Event()
        # Compressed up front: the inflated 50 MiB must not count in a test's memory peak.
        self._bomb = gzip.compress(b" " * BOMB_BYTES) if mode == "gzip_bomb" else b""
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                if length:
                    self.rfile.read(length)
                with owner._lock:
                    owner.requests += 1
                    if owner.first_request_at is None:
                        owner.first_request_at = time.monotonic()
                # A small send buffer, so what "sent" counts is close to what the client read.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _CHUNK)
                try:
                    owner._answer(self)
                except OSError:  # BrokenPipe, ConnectionReset: the client hung up
                    owner.hung_up_at = time.monotonic()
                self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        if self.mode == "redirect":
            handler.send_response(self.status)
            handler.send_header("Location", self.location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if self.mode in ("gzip_bomb", "bad_gzip"):
            body = self._bomb if self.mode == "gzip_bomb" else b"this is not gzip"
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Encoding", "gzip")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            self.body_bytes_sent += len(body)
            self.body_completed = True
            return
        if self.mode == "ok":
            body = b'{"ok": true}'
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        total = HUGE_BYTES if self.mode == "huge" else 1_000_000_000
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        handler.wfile.flush()
        if self.mode == "drip":
            while not self._stop.is_set():
                handler.wfile.write(b" ")
                handler.wfile.flush()
                self.body_bytes_sent += 1
                self._stop.wait(DRIP_INTERVAL)
            return
        chunk = b" " * _CHUNK
        while self.body_bytes_sent < total:
            handler.wfile.write(chunk)
            self.body_bytes_sent += len(chunk)
        handler.wfile.flush()
        self.body_completed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
