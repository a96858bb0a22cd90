"""bench/loadgen.py, the lean load generator of `queue_throughput.py --http`, against a local
HTTP/1.1 server that records what it receives: every request sent once, request i to target
i mod T (so each API key takes an equal share), status counts and bodies read right across
keep-alive and `Connection: close` answers; and the key/organization arithmetic of the --http
mode at the default rate limits."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from bench.loadgen import Target, run
from bench.queue_http import tenants_needed

from taskloom.config import Settings


class _Recorder:
    """Answers 202 with a JSON body (every 7th answer closes the connection), or 429 for the
    token "limited"; counts requests by (path, token, body)."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[str, str, str]] = Counter()
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                body = await reader.readexactly(int(fields.get("content-length", "0")))
                token = fields.get("authorization", "").removeprefix("Bearer ")
                self.seen[(lines[0].split()[1], token, body.decode())] += 1
                n = sum(self.seen.values())
                status = "429 Too Many Requests" if token == "limited" else "202 Accepted"
                payload = json.dumps({"n": n}).encode()
                close = n % 7 == 0
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n"
                    f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                if close:
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


async def test_requests_are_spread_evenly_over_the_targets_and_all_answered() -> None:
    recorder = _Recorder()
    server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    body = '{"input": {"n": 1}}'
    targets = [
        Target(f"http://127.0.0.1:{port}/api/w{i}/execute", f"key-{i}", body) for i in range(3)
    ]
    try:
        result = await run([*targets, Target(targets[0].url, "limited", body)], 400, 8)
    finally:
        server.close()
    assert result["requests"] == 400
    assert result["statuses"] == {"202": 300, "429": 100}
    assert recorder.seen == {
        **{(f"/api/w{i}/execute", f"key-{i}", body): 100 for i in range(3)},
        ("/api/w0/execute", "limited", body): 100,
    }
    assert recorder.connections > 8  # the closed connections were opened again
    assert result["sample_error"] is not None
    assert result["sample_error"].startswith("429 ")
    assert result["client_cpu_ms_per_request"] >= 0
    assert result["last_response"] > result["first_sent"]


def test_organizations_cover_the_execute_limit_and_the_running_cap_at_the_defaults() -> None:
    settings = Settings(_env_file=None, taskloom_env="test")  # type: ignore[call-arg]
    assert (settings.rate_limit_execute, settings.rate_limit_window_seconds) == (600, 60)
    assert settings.max_running_per_org == 5
    # 3,000 at 500/s: 6 s, a key may send 600 + 6 x 10 = 660; 1.5 x 3000 / 660 -> 7 keys.
    need = tenants_needed(settings, 3000, 500.0, slots=10)
    assert need == {
        "orgs": 7,
        "by_rate_limit": 7,
        "by_running_cap": 2,
        "per_key_allowed": 660,
        "run_seconds_at_target": 6.0,
    }
    # 40 worker slots need 8 organizations to be filled under the cap of 5 running each.
    assert tenants_needed(settings, 300, 500.0, slots=40)["orgs"] == 8
