"""What rendering a step's arguments costs the worker, per render, for typical templates.

Each case is rendered N times the way the worker renders it: `TemplateRenderer.render` (cheap
templates in-process, the others in a render process; docs/adr/0005). On code from before
that ADR, where the worker called `templating.render` on its event loop, it measures that
instead, so the same script gives the before/after figures in one sitting (check out the older
`src/` and run it again). Prints, per case, the worker's CPU µs per render, the render process's
CPU µs per render (0 when in-process) and the wall µs per render, then `RESULT {json}`.

Usage: python bench/templating.py [--renders 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from taskloom.executions.templating import render

try:
    from taskloom.executions.template_process import TemplateRenderer
except ImportError:  # the code before docs/adr/0005
    TemplateRenderer = None  # type: ignore[assignment,misc]

SCOPE: dict[str, Any] = {
    "input": {"x": 42, "name": "Ann", "n": 3, "list": list(range(20))},
    "steps": {"fetch": {"output": {"status": 200, "body": {"id": 7, "tags": ["a", "b"]}}}},
}
CASES: dict[str, Any] = {
    "lookup": {"value": "{{ input.x }}"},
    "text": {"text": "Hello {{ input.name }}, item {{ steps.fetch.output.body.id }}!"},
    "tests_transform": {"value": {"msg": "Hello {{ input.name }}", "n": "{{ input.n * 2 }}"}},
    "loop": {"value": "{% for i in input.list %}{{ i }},{% endfor %}"},
}


def _tree_cpu_seconds(pid: int) -> float:
    """CPU of the process's descendants (the fork server and the render processes)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            stat = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
            total += _tree_cpu_seconds(int(child))
    return total


async def _measure(renders: int) -> dict[str, dict[str, float]]:
    renderer = None
    if TemplateRenderer is not None:
        renderer = TemplateRenderer(timeout_seconds=1.0, memory_bytes=256 * 1_048_576)
        await renderer.warm_up()
    results: dict[str, dict[str, float]] = {}
    for name, args in CASES.items():
        for _ in range(50):  # compile caches, a warm render process
            await _render(renderer, args)
        cpu, children, wall = time.process_time(), _tree_cpu_seconds(os.getpid()), time.monotonic()
        for _ in range(renders):
            await _render(renderer, args)
        results[name] = {
            "worker_cpu_us": (time.process_time() - cpu) / renders * 1e6,
            "render_process_cpu_us": (_tree_cpu_seconds(os.getpid()) - children) / renders * 1e6,
            "wall_us": (time.monotonic() - wall) / renders * 1e6,
        }
    if renderer is not None:
        await renderer.aclose()
    return results


async def _render(renderer: Any, args: Any) -> Any:
    if renderer is None:
        return render(args, SCOPE, "args")
    return await renderer.render(args, SCOPE, path="args")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=5000)
    options = parser.parse_args()
    code = "before (in-process)" if TemplateRenderer is None else "after (TemplateRenderer)"
    results = asyncio.run(_measure(options.renders))
    print(f"{code}, {options.renders} renders per case")
    print(f"{'case':<16} {'worker CPU µs':>14} {'render process CPU µs':>22} {'wall µs':>9}")
    for name, row in results.items():
        print(
            f"{name:<16} {row['worker_cpu_us']:>14.1f} {row['render_process_cpu_us']:>22.1f}"
            f" {row['wall_us']:>9.1f}"
        )
    print("RESULT " + json.dumps({"code": code, "cases": results}))


if __name__ == "__main__":  # render processes are forked from a server that re-imports __main__
    main()
