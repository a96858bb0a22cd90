"""Infrastructure imports no domain (docs/ARCHITECTURE.md): the job host (queue/), observability
and the database layer are plugged into by the domains, never the other way round. Where every
domain must be listed, the list lives one floor above them (taskloom/jobs.py, next to app.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import taskloom

SRC = Path(taskloom.__file__).parent
DOMAINS = {
    "ai",
    "audit",
    "auth",
    "executions",
    "flags",
    "gdpr",
    "orgs",
    "sso",
    "tools",
    "triggers",
    "web",
    "webhooks",
    "workflows",
}
INFRASTRUCTURE = ("queue", "observability", "db")  # the model list is taskloom/models.py


def _imported(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def _domain(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "taskloom" and len(parts) > 1 and parts[1] in DOMAINS:
        return parts[1]
    return None


def test_infrastructure_imports_no_domain() -> None:
    offending = []
    for package in INFRASTRUCTURE:
        for path in sorted((SRC / package).rglob("*.py")):
            relative = path.relative_to(SRC).as_posix()
            for module in sorted(_imported(path)):
                if _domain(module):
                    offending.append(f"{relative} imports {module}")
    assert offending == []


def test_the_checker_sees_a_domain_import(tmp_path: Path) -> None:
    """Guard against a checker that passes because it finds nothing."""
    source = tmp_path / "example.py"
    source.write_text(
        "from taskloom.executions.queue import ExecutionQueue\nimport taskloom.gdpr.archive\n"
        "from taskloom import webhooks\nfrom taskloom.redis import Keys\n"
    )
    found = {module for module in _imported(source) if _domain(module)}
    assert found == {
        "taskloom.executions.queue",
        "taskloom.executions.queue.ExecutionQueue",
        "taskloom.gdpr.archive",
        "taskloom.webhooks",
    }
