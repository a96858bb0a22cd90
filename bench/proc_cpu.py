"""CPU time by process group from /proc (Linux): who spent the machine during a measurement."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def processes() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, command name, utime + stime ticks) of every process."""
    table: dict[int, tuple[int, str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), name, int(fields[11]) + int(fields[12]))
    return table


def descendants(table: dict[int, tuple[int, str, int]], roots: list[int]) -> set[int]:
    found, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _, _) in table.items() if ppid == parent]
        found.update(children)
        frontier.extend(children)
    return found


def machine() -> tuple[float, float]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return float(sum(fields)), float(sum(fields) - fields[3] - fields[4])


@dataclass
class Snapshot:
    table: dict[int, tuple[int, str, int]]
    total: float
    busy: float

    @classmethod
    def take(cls) -> Snapshot:
        total, busy = machine()
        return cls(processes(), total, busy)


def ticks(before: Snapshot, after: Snapshot, pids: set[int]) -> float:
    """CPU seconds the processes used between the snapshots (those born since count whole)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = 0
    for pid in pids:
        if pid in after.table:
            used += after.table[pid][2] - (before.table[pid][2] if pid in before.table else 0)
    return used / tick
