"""The engine's overhead per agent turn (issue 22): executions of one `agent` step whose model and
tool answer instantly, run in this process the way a worker runs them (claim, then the engine).

The model is tests/fakes/ai_apis.FakeAnthropic and the tool GitHub's `getIssues` on
tests/fakes/tool_apis.FakeGitHub, each in a process of its own so that this process's CPU is the
engine's: the Anthropic SDK (streaming), budget reservation and settlement, the turn's and the
tool call's rows, the tool executor (breaker, cache lookup, the provider's HTTP call), live
events. The model asks for one tool call per turn (a different page each time, so the tool
cache never answers) until the last turn, which answers. PostgreSQL and Redis are the servers
named by BENCH_DATABASE_URL and BENCH_REDIS_URL, in a scratch database and key prefix.

Prints CPU ms per turn (a turn = one model call and one tool call; this process's user + system
CPU over the timed runs, divided by their turns) and turns/s of this one process with
`--concurrency` executions at a time, and a final RESULT line.

Usage: .venv/bin/python bench/agent_overhead.py [--executions 40] [--turns 10] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import scratch_deployment

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _answer_factory(turns: int) -> Any:
    from tests.fakes.ai_apis import Reply

    def answer(request: Any) -> Reply:
        done = sum(1 for m in request.json["messages"] if m["role"] == "assistant")
        if done + 1 >= turns:
            return Reply("done", input_tokens=200, output_tokens=5)
        page = done + 1
        return Reply(
            "",
            tool_calls=[(f"call_{page}", "gh__getIssues", {"state": "open", "page": page})],
            input_tokens=200,
            output_tokens=10,
        )

    return answer


def _serve(kind: str, turns: int, urls: Any, stop: Any) -> None:
    """Child process: one fake server until `stop` is set."""
    if kind == "model":
        from tests.fakes.ai_apis import FakeAnthropic

        model = FakeAnthropic()
        model.reply(_answer_factory(turns))
        model.start()
        urls.put(("model", model.base_url, model.api_key))
        stop.wait()
        model.stop()
    else:
        from tests.fakes.tool_apis import FakeGitHub

        github = FakeGitHub()
        github.start()
        urls.put(("github", github.base_url, github.token))
        stop.wait()
        github.stop()


async def _run(args: argparse.Namespace, servers: dict[str, tuple[str, str]]) -> dict[str, Any]:
    from tests.factories import register
    from tests.in_process import asgi_client, opened_runtime, running_app

    from taskloom.executions import state
    from taskloom.executions.engine import Engine
    from taskloom.executions.template_process import TemplateRenderer
    from taskloom.observability.logging import configure_logging

    pg = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    redis = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    async with (
        scratch_deployment(
            pg, redis, label="agentbench", outbound_allowed_hosts="127.0.0.1", ai_max_retries=0
        ) as settings,
        opened_runtime(settings) as runtime,
        running_app(runtime) as app,
        asgi_client(app, ip="203.0.113.9") as api,
    ):
        configure_logging(settings)
        owner = await register(api, label="bench", organization_name="Agent Bench")
        model_url, model_key = servers["model"]
        github_url, github_token = servers["github"]
        for body in (
            {"provider": "anthropic", "name": "claude", "base_url": model_url,
             "credentials": {"api_key": model_key}},
            {"provider": "github", "name": "gh", "base_url": github_url,
             "credentials": {"token": github_token},
             "config": {"owner": "octocat", "repo": "hello-world"}},
        ):  # fmt: skip
            created = await api.post("/api/connections", json=body, headers=owner.headers)
            assert created.status_code == 201, created.text
        step = {
            "id": "agent",
            "type": "agent",
            "args": {
                "model": "claude-haiku-4-5",
                "prompt": "Read the issues",
                "tools": [{"connection": "gh", "tool": "getIssues"}],
                "max_iterations": args.turns,
            },
        }
        workflow = await api.post(
            "/api/workflows",
            json={"name": "agent-bench", "definition": {"steps": [step]}},
            headers=owner.headers,
        )
        assert workflow.status_code == 201, workflow.text
        workflow_id = workflow.json()["id"]
        templates = TemplateRenderer.from_settings(settings)
        assert owner.org_id is not None
        org_id = owner.org_id

        async def one() -> int:
            started = await api.post(
                f"/api/workflows/{workflow_id}/execute", json={"input": {}}, headers=owner.headers
            )
            assert started.status_code == 202, started.text
            execution_id = uuid.UUID(started.json()["execution_id"])
            _, run = await state.claim(
                runtime.database, execution_id=execution_id, org_id=org_id, max_running=1000
            )
            assert run is not None

            async def progressed() -> None:
                return None

            finished = await Engine(runtime, templates, run, on_progress=progressed).execute()
            assert finished.status == "succeeded", finished
            return args.turns

        async def batch(count: int) -> int:
            gate = asyncio.Semaphore(args.concurrency)

            async def gated() -> int:
                async with gate:
                    return await one()

            return sum(await asyncio.gather(*(gated() for _ in range(count))))

        try:
            await batch(min(args.concurrency, args.executions))  # warm-up: imports, pools
            before = resource.getrusage(resource.RUSAGE_SELF)
            wall = time.perf_counter()
            turns = await batch(args.executions)
            wall = time.perf_counter() - wall
            after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            await templates.aclose()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "executions": args.executions,
        "turns_per_execution": args.turns,
        "turns": turns,
        "tool_calls": turns - args.executions,
        "concurrency": args.concurrency,
        "cpu_ms_per_turn": round(cpu * 1000 / turns, 2),
        "turns_per_second": round(turns / wall, 1),
        "wall_seconds": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=40)
    parser.add_argument("--turns", type=int, default=10, help="model turns per execution")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    urls = context.Queue()
    stop = context.Event()
    children = [
        context.Process(target=_serve, args=(kind, args.turns, urls, stop), daemon=True)
        for kind in ("model", "github")
    ]
    for child in children:
        child.start()
    servers: dict[str, tuple[str, str]] = {}
    for _ in children:
        kind, url, secret = urls.get(timeout=60)
        servers[kind] = (url, secret)
    try:
        result = asyncio.run(_run(args, servers))
    finally:
        stop.set()
        for child in children:
            child.join(timeout=10)
    print(f"executions            {result['executions']} x {result['turns_per_execution']} turns")
    print(f"concurrency           {result['concurrency']}")
    print(f"CPU per turn          {result['cpu_ms_per_turn']} ms (model call + tool call)")
    print(f"turns/s (1 process)   {result['turns_per_second']}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
