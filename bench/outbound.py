"""Outbound connection reuse (issue 20): tool calls/s and CPU per call with the outbound pool
(taskloom/outbound_pool.py) and without it (OUTBOUND_POOL_MAX_CLIENTS=0), in one run.

Two servers, each in a process of its own so that the bench process's CPU is the caller's:
- a GitHub-shaped HTTPS API (tests/fakes/tool_apis.FakeGitHub behind TLS), called with the
  GitHub provider's `getIssues`;
- the reference MCP server (tests/fakes/mcp_server, built with the `mcp` SDK) over HTTPS,
  called as the tool executor calls it: list the tools, then call `search_notes`, each in a
  session of its own (sessions are not reused; the pool reuses connections).
Their certificates come from a throwaway CA (tests/pki.py) that this process adds to its
outbound TLS contexts, the way a deployment would trust an internal CA. The address guard is
on (OUTBOUND_ALLOWED_HOSTS=127.0.0.1).

Each call is what `tools/executor.call_tool` does around the network: `provider_client` (the
pool's transport, or a transport of the call's own), then the provider. The database and Redis
parts of a tool call do not change with reuse and are left out. Calls run `--concurrency` at a
time; rounds alternate pooled and unpooled. Prints calls/s, client CPU per call (this process),
server CPU per call, TCP connections the server accepted, and the ratios; a final RESULT line.

Usage: .venv/bin/python bench/outbound.py [--calls 400] [--mcp-calls 100] [--rounds 3]
       [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taskloom.config import Settings
from taskloom.net import tls_context, tls_context2
from taskloom.outbound_pool import OutboundPool
from taskloom.tools.base import Connection
from taskloom.tools.client import provider_client
from taskloom.tools.registry import PROVIDERS

MCP_TOKEN = "bench-mcp-token"
_TICKS = os.sysconf("SC_CLK_TCK")


def _serve(kind: str, cert: str, key: str) -> None:
    """Child process: start one server, print its base URL, serve until stdin closes."""
    import ssl
    import threading

    if kind == "mcp":
        from tests.fakes.mcp_server import start_mcp_server

        server = start_mcp_server(MCP_TOKEN, tls=(Path(cert), Path(key)))
        url = server.url
    else:
        from tests.fakes import tool_apis

        fake = tool_apis.FakeGitHub()
        # Nagle off, as real servers have it: headers and body go in two writes, and the
        # second would wait for the client's delayed ACK (40 ms) on a kept-alive socket.
        handler = type(
            "Handler", (tool_apis._Handler,), {"fake": fake, "disable_nagle_algorithm": True}
        )
        http = tool_apis._Server(("127.0.0.1", 0), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        http.socket = context.wrap_socket(http.socket, server_side=True)
        fake._server = http
        fake.origin = f"https://127.0.0.1:{http.server_address[1]}"
        threading.Thread(target=http.serve_forever, args=(0.02,), daemon=True).start()
        url = f"{fake.base_url}|{fake.token}"
    print(url, flush=True)
    sys.stdin.read()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _connections_to(port: int) -> int:
    """Established TCP connections to 127.0.0.1:<port> now (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        remote, state = line.split()[2:4]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


@dataclass
class Target:
    name: str
    connection: Connection
    tool: str
    args: dict[str, Any]
    server: subprocess.Popen[str]

    @property
    def port(self) -> int:
        from urllib.parse import urlsplit

        return int(urlsplit(self.connection.base_url).port or 443)


async def _one_call(settings: Settings, pool: OutboundPool, target: Target) -> None:
    provider = PROVIDERS[target.connection.provider]
    async with provider_client(settings, target.connection, pool=pool) as http:
        if target.connection.provider == "mcp":
            await provider.tools(target.connection, http)  # as the executor does
        await provider.call(target.connection, http, target.tool, target.args)


async def _run(
    settings: Settings, target: Target, *, pooled: bool, calls: int, concurrency: int
) -> dict[str, float]:
    pool = OutboundPool.from_settings(settings) if pooled else OutboundPool(max_clients=0)
    await _one_call(settings, pool, target)  # warm-up (imports, first connection)
    remaining = calls
    peak = 0

    async def worker() -> None:
        nonlocal remaining, peak
        while remaining > 0:
            remaining -= 1
            await _one_call(settings, pool, target)

    server_cpu, client_cpu = _cpu_seconds(target.server.pid), time.process_time()
    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    while not all(task.done() for task in tasks):
        peak = max(peak, _connections_to(target.port))
        await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    client = time.process_time() - client_cpu
    server = _cpu_seconds(target.server.pid) - server_cpu
    opened = pool.opened
    await pool.aclose()
    return {
        "calls_per_s": calls / elapsed,
        "client_cpu_ms": client / calls * 1000,
        "server_cpu_ms": server / calls * 1000,
        "transports_opened": opened,
        "peak_connections": peak,
    }


def _start(kind: str, cert: Path, key: Path) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, str(cert), str(key)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert server.stdout is not None
    line = server.stdout.readline().strip()
    if not line:
        raise SystemExit(f"the {kind} server did not start")
    return server, line


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from tests.pki import make_pki

    pki = make_pki(Path(tempfile.mkdtemp(prefix="tl-outbound-")))
    tls_context().load_verify_locations(pki.ca)  # trust the bench CA, as an operator's own
    tls_context2().load_verify_locations(pki.ca)
    settings = Settings(
        _env_file=None,
        taskloom_env="test",
        outbound_allowed_hosts="127.0.0.1",
        outbound_pool_max_connections=args.concurrency,
    )
    org = uuid.uuid4()
    github, github_url = _start("github", pki.server_cert, pki.server_key)
    mcp, mcp_url = _start("mcp", pki.server_cert, pki.server_key)
    base_url, token = github_url.split("|")
    targets = [
        Target(
            "https_github_getIssues",
            Connection(uuid.uuid4(), org, "github", base_url, {"token": token}),
            "getIssues",
            {"owner": "octocat", "repo": "hello-world"},
            github,
        ),
        Target(
            "mcp_https_search_notes",
            Connection(uuid.uuid4(), org, "mcp", mcp_url, {"bearer_token": MCP_TOKEN}),
            "search_notes",
            {"query": "welcome"},
            mcp,
        ),
    ]
    result: dict[str, Any] = {"concurrency": args.concurrency, "rounds": args.rounds}
    try:
        for target in targets:
            calls = args.mcp_calls if target.connection.provider == "mcp" else args.calls
            runs: dict[str, list[dict[str, float]]] = {"pooled": [], "unpooled": []}
            for _ in range(args.rounds):
                for mode in ("pooled", "unpooled"):
                    runs[mode].append(
                        await _run(
                            settings,
                            target,
                            pooled=mode == "pooled",
                            calls=calls,
                            concurrency=args.concurrency,
                        )
                    )
            for mode, samples in runs.items():
                for metric in samples[0]:
                    value = statistics.median(sample[metric] for sample in samples)
                    result[f"{target.name}_{mode}_{metric}"] = round(value, 3)
            pooled, unpooled = (f"{target.name}_{m}" for m in ("pooled", "unpooled"))
            result[f"{target.name}_ratio_calls_per_s"] = round(
                result[f"{pooled}_calls_per_s"] / result[f"{unpooled}_calls_per_s"], 2
            )
            result[f"{target.name}_ratio_client_cpu"] = round(
                result[f"{pooled}_client_cpu_ms"] / result[f"{unpooled}_client_cpu_ms"], 2
            )
            result[f"{target.name}_calls"] = calls
    finally:
        for server in (github, mcp):
            assert server.stdin is not None
            server.stdin.close()
            server.wait(timeout=10)
    return result


def _print_table(result: dict[str, Any]) -> None:
    print(
        f"{'target':<26} {'mode':<9} {'calls/s':>9} {'client ms':>10} {'server ms':>10} "
        f"{'transports':>10} {'peak conns':>10}"
    )
    for name in ("https_github_getIssues", "mcp_https_search_notes"):
        for mode in ("pooled", "unpooled"):
            p = f"{name}_{mode}_"
            print(
                f"{name:<26} {mode:<9} {result[p + 'calls_per_s']:>9.0f} "
                f"{result[p + 'client_cpu_ms']:>10.2f} {result[p + 'server_cpu_ms']:>10.2f} "
                f"{result[p + 'transports_opened']:>10.0f} {result[p + 'peak_connections']:>10.0f}"
            )
        print(
            f"{name:<26} pooled/unpooled: calls/s x{result[name + '_ratio_calls_per_s']}, "
            f"client CPU x{result[name + '_ratio_client_cpu']}"
        )


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        _serve(sys.argv[2], sys.argv[3], sys.argv[4])
        return 0
    parser = argparse.ArgumentParser(description="Outbound connection reuse, on and off")
    parser.add_argument("--calls", type=int, default=400, help="HTTPS tool calls per round")
    parser.add_argument("--mcp-calls", type=int, default=100, help="MCP tool calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    _print_table(result)
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
