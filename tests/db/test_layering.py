"""`db/` is infrastructure: it imports no domain. The list of every model lives one floor up, in
`taskloom/models.py`, which only the process entry points import (Alembic's env.py is one)."""

from __future__ import annotations

import ast
from pathlib import Path

import taskloom

DB = Path(taskloom.__file__).parent / "db"
INFRASTRUCTURE = ("taskloom.config", "taskloom.db", "taskloom.observability", "taskloom.redis")
ENTRY_POINTS = {DB / "migrations" / "env.py": ("taskloom.models",)}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "taskloom" or name.startswith("taskloom.")}


def test_db_imports_no_domain() -> None:
    upward = {
        f"{path.relative_to(DB.parent)}: {name}"
        for path in DB.rglob("*.py")
        for name in _imports(path)
        if not name.startswith(INFRASTRUCTURE + ENTRY_POINTS.get(path, ()))
    }
    assert not upward, sorted(upward)
