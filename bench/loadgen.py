"""A lean HTTP/1.1 load generator that does not measure itself: C keep-alive connections, each
with one request in flight, requests pre-encoded once per target (path, token, body), and only
the status line, Content-Length and body of each answer parsed. It prints its own CPU per request
(getrusage of its process over the run), which must stay far below the server's (an httpx client
costs 2.5-3.4 ms per request here, this one about a tenth of a millisecond).

    python bench/loadgen.py --url http://127.0.0.1:8000/api/workflows/ID/execute --token TOKEN
        [--url ... --token ...] --requests N --connections C [--body '{"input": {}}']
    python bench/loadgen.py --spec spec.json [--wait-for-go]

Request i goes to target i mod T (so T API keys each take an equal share, whatever the
connections' speeds). Prints one JSON object: requests, seconds, rate, status counts,
client_cpu_ms_per_request, latency p50/p99 (ms), and the CLOCK_MONOTONIC times of the first
request sent and the last answer (comparable across processes on this machine). With
`--wait-for-go` it opens every connection, prints `READY`, and starts when a line arrives on
stdin, so a caller can take its CPU snapshot between the two. `run()` is the library entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None = None
    body: str | None = None  # JSON text: POSTed; None: GET


def encode(target: Target) -> tuple[str, int, bytes]:
    """(host, port, the request's bytes), built once."""
    parts = urlsplit(target.url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http:// URLs: {target.url}")
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{'GET' if target.body is None else 'POST'} {path} HTTP/1.1", f"host: {parts.netloc}"]
    if target.token:
        lines.append(f"authorization: Bearer {target.token}")
    body = (target.body or "").encode()
    if target.body is not None:
        lines += ["content-type: application/json", f"content-length: {len(body)}"]
    return parts.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Run:
    """What the connections share: the next request's number and what came back."""

    def __init__(self, payloads: list[bytes], total: int) -> None:
        self.payloads = payloads
        self.total = total
        self.next = 0
        self.statuses: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.first_sent = 0.0
        self.last_response = 0.0
        self.sample_error: str | None = None


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, the server will close the connection)."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        if b"transfer-encoding: chunked" in head:
            raise RuntimeError("chunked answers are not supported")
        return status, b"", b"connection: close" in head
    end = head.index(b"\r\n", at + 17)
    body = await reader.readexactly(int(head[at + 17 : end]))
    return status, body, b"connection: close" in head


async def _connection(
    host: str, port: int, run: _Run, opened: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    reader, writer = opened
    payloads, count = run.payloads, len(run.payloads)
    clock, latencies, statuses = time.monotonic, run.latencies, run.statuses
    try:
        while run.next < run.total:
            n = run.next
            run.next += 1
            began = clock()
            writer.write(payloads[n % count])
            status, body, closing = await _read_answer(reader)
            ended = clock()
            latencies.append(ended - began)
            statuses[status] += 1
            run.last_response = ended
            if status >= 300 and run.sample_error is None:
                run.sample_error = f"{status} {body[:300].decode(errors='replace')}"
            if closing:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def _cpu_seconds() -> float:
    """This process's user + system CPU: getrusage, to the microsecond (os.times counts 10 ms
    ticks, too coarse for a short run)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(int(q * len(sorted_values)), len(sorted_values) - 1)]


async def run(
    targets: Sequence[Target], requests: int, connections: int, *, wait_for_go: bool = False
) -> dict[str, Any]:
    """Send `requests` requests over `connections` connections; the measured figures."""
    encoded = [encode(t) for t in targets]
    if len({(host, port) for host, port, _ in encoded}) != 1:
        raise ValueError("every target must be on one host and port")
    host, port = encoded[0][0], encoded[0][1]
    state = _Run([payload for _, _, payload in encoded], requests)
    opened = [await asyncio.open_connection(host, port) for _ in range(connections)]
    if wait_for_go:
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    cpu_before = _cpu_seconds()
    state.first_sent = began = time.monotonic()
    await asyncio.gather(*(_connection(host, port, state, pair) for pair in opened))
    seconds = time.monotonic() - began
    cpu = _cpu_seconds() - cpu_before
    latencies = sorted(state.latencies)
    done = sum(state.statuses.values())
    return {
        "generator": "loadgen.py",
        "requests": done,
        "connections": connections,
        "seconds": round(seconds, 4),
        "rate": round(done / seconds, 1) if seconds else 0.0,
        "statuses": {str(k): v for k, v in sorted(state.statuses.items())},
        "client_cpu_ms_per_request": round(1000 * cpu / max(done, 1), 4),
        "latency_ms": {
            "p50": round(1000 * _percentile(latencies, 0.50), 2),
            "p99": round(1000 * _percentile(latencies, 0.99), 2),
        },
        "first_sent": state.first_sent,
        "last_response": state.last_response,
        "sample_error": state.sample_error,
    }


def _run_loop(main: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main() -> int:
    parser = argparse.ArgumentParser(description="Lean HTTP/1.1 load generator")
    parser.add_argument("--url", action="append", default=[], help="repeatable, one per target")
    parser.add_argument("--token", action="append", default=[], help="bearer token per --url")
    parser.add_argument("--body", default=None, help="JSON body (POST); none: GET")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--spec", help="JSON file: {targets: [{url, token, body}], requests, ...}")
    parser.add_argument("--wait-for-go", action="store_true", help="READY, then a stdin line")
    args = parser.parse_args()
    if args.spec:
        with open(args.spec) as handle:
            spec = json.load(handle)
        targets = [Target(**t) for t in spec["targets"]]
        requests, connections = spec["requests"], spec["connections"]
    else:
        if not args.url or (args.token and len(args.token) not in (1, len(args.url))):
            parser.error("one or more --url, and no --token, one, or one per --url")
        tokens = args.token * len(args.url) if len(args.token) == 1 else args.token
        tokens = tokens or [None] * len(args.url)
        targets = [Target(u, t, args.body) for u, t in zip(args.url, tokens, strict=True)]
        requests, connections = args.requests, args.connections
    result = _run_loop(run(targets, requests, connections, wait_for_go=args.wait_for_go))
    print(json.dumps(result), flush=True)
    return 0 if result["requests"] == requests else 1


if __name__ == "__main__":
    sys.exit(main())
