"""`taskloom workflows run NAME --input FILE [--wait]`: start a workflow on the server and, with
`wait`, follow its execution, telling each step's status as it changes (docs/WORKFLOWS-AS-CODE.md).
Exit codes: 0 succeeded (or accepted, without `wait`), 1 failed or cancelled, 2 usage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from taskloom.workflows.remote import Remote, UsageError

ENDED = {"succeeded", "failed", "cancelled"}
POLL_SECONDS = 0.3


def find_workflow(remote: Remote, name: str) -> dict[str, Any]:
    """The workflow whose key is `name`, else the only one with that name; UsageError else."""
    workflows: list[dict[str, Any]] = remote.get("/api/workflows")
    by_key = [w for w in workflows if w.get("key") == name]
    if by_key:
        return by_key[0]
    by_name = [w for w in workflows if w["name"] == name]
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        raise UsageError(f"{len(by_name)} workflows are named {name!r}: name one by its key")
    raise UsageError(f"no workflow has the key or name {name!r}")


def run(
    remote: Remote,
    name: str,
    data: dict[str, Any],
    *,
    wait: bool,
    say: Callable[[str], None],
    timeout: float,
) -> int:
    workflow = find_workflow(remote, name)
    accepted = remote.post(f"/api/workflows/{workflow['id']}/execute", {"input": data})
    execution_id = accepted["execution_id"]
    say(f"execution {execution_id} accepted")
    if not wait:
        return 0
    seen: dict[str, str] = {}
    status = ""
    deadline = time.monotonic() + timeout
    while True:
        execution = remote.get(f"/api/executions/{execution_id}")
        for step in execution["steps"]:
            if seen.get(step["step_id"]) != step["status"]:
                seen[step["step_id"]] = step["status"]
                error = step.get("error") or {}
                why = f" ({error.get('code')}: {error.get('message')})" if error else ""
                say(f"step {step['step_id']}: {step['status']}{why}")
        if execution["status"] != status:
            status = execution["status"]
            if status in ENDED:
                break
        if time.monotonic() > deadline:
            say(f"execution {execution_id}: still {status} after {timeout:.0f} s; stopped waiting")
            return 1
        time.sleep(POLL_SECONDS)
    error = execution.get("error") or {}
    why = f" ({error.get('code')}: {error.get('message')})" if error else ""
    say(f"execution {execution_id}: {status}{why}")
    return 0 if status == "succeeded" else 1
