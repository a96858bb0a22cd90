"""The AI and MCP SDKs take seconds of CPU to import (anthropic ~2.5 s, mcp ~1.3 s, openai ~0.9 s
on the CI machine). A worker restarted after a crash, or an API process, must not pay that before
it serves anything: they are imported by the first call that needs them."""

from __future__ import annotations

import json
import subprocess
import sys

SDKS = ("anthropic", "openai", "mcp", "mcp_types")


def test_starting_the_api_or_a_worker_imports_no_ai_or_mcp_sdk() -> None:
    code = (
        "import json, sys\n"
        "import taskloom.cli, taskloom.app, taskloom.queue.worker, taskloom.tools.registry\n"
        "from taskloom.workflows.steps import STEP_TYPES\n"
        "assert {'ai', 'tool'} <= set(STEP_TYPES)\n"
        f"print(json.dumps([m for m in {SDKS!r} if m in sys.modules]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(run.stdout) == []


def test_the_sdks_load_when_a_provider_is_first_used() -> None:
    code = (
        "import json, sys\n"
        "from taskloom.ai.executor import _provider_class\n"
        "kinds = [_provider_class('anthropic').__name__, _provider_class('openai').__name__]\n"
        f"print(json.dumps([kinds, [m for m in {SDKS[:2]!r} if m in sys.modules]]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(run.stdout) == [["AnthropicProvider", "OpenAIProvider"], list(SDKS[:2])]
