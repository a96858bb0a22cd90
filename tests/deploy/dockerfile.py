"""A small Dockerfile reader for the tests: instructions per build stage, continuations joined
and comments dropped (enough for our own Dockerfile; not a general parser)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case, e.g. "RUN"
    arguments: str  # the rest of the logical line, continuations joined

    def exec_form(self) -> list[str]:
        """The JSON array form (ENTRYPOINT ["taskloom"]) as a list; shell form split by shlex."""
        text = self.arguments.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list)
            return [str(item) for item in value]
        return shlex.split(text)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def index(self, keyword: str) -> int:
        """The position of the last `keyword` instruction in the stage."""
        positions = [n for n, i in enumerate(self.instructions) if i.keyword == keyword]
        assert positions, f"no {keyword} in stage {self.name or self.base}"
        return positions[-1]


def logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return [line for line in lines if line]


def parse(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, arguments.strip()))
    return stages
