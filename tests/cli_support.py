"""Running the `taskloom` command in a subprocess, with a clean environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Taskloom setting, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "REDIS_", "TASKLOOM_", "JWT_", "TEST_", "CREDENTIAL_"))
    }
    env.update(extra)
    return env


async def run_taskloom(
    *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess without blocking the event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskloom", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
