"""The AI and MCP SDKs take seconds of CPU to import (anthropic ~2.5 s, mcp ~1.3 s, openai ~0.9 s
on the CI machine). A worker restarted after a crash, or an API process, must not pay that before
it serves anything: they are imported by the first call that needs them."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

SDKS = ("anthropic", "openai", "mcp", "mcp_types")


def _run(code: str) -> Any:
    """Run `code` in a fresh interpreter; it prints JSON that lists `loaded`, the SDKs imported."""
    prelude = f"import json, sys\nloaded = lambda: [m for m in {SDKS!r} if m in sys.modules]\n"
    run = subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(run.stdout)


def test_starting_the_api_or_a_worker_imports_no_ai_or_mcp_sdk() -> None:
    assert (
        _run(
            "import taskloom.cli, taskloom.app, taskloom.jobs, taskloom.queue.worker\n"
            "import taskloom.tools.registry\n"
            "from taskloom.executions.steps import STEP_TYPES\n"
            "assert {'ai', 'tool'} <= set(STEP_TYPES)\n"
            "print(json.dumps(loaded()))\n"
        )
        == []
    )


def test_the_sdks_load_when_a_provider_is_first_used() -> None:
    assert _run(
        "import asyncio\n"
        "from taskloom.ai.executor import _provider_class\n"
        "async def main():\n"
        "    return [(await _provider_class(p)).__name__ for p in ('anthropic', 'openai')]\n"
        "kinds = asyncio.run(main())\n"
        "print(json.dumps([kinds, loaded()]))\n"
    ) == [["AnthropicProvider", "OpenAIProvider"], ["anthropic", "openai"]]
