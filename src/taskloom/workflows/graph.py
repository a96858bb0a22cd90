"""The shape of a workflow definition as a graph of steps: who needs whom.

Pure and unvalidated, so the validator, the engine and the drawing share one reading of a
definition. A definition where no step declares `needs` is a chain in list order (each step needs
the previous one); once any step declares `needs`, it is a DAG and a step without `needs` is a
root. Unknown ids in `needs` are kept (the validator reports them) but ignored when walking."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

JOINS = ("all_succeeded", "all_done", "any_succeeded")


@dataclass(frozen=True)
class Graph:
    order: tuple[str, ...]
    steps: Mapping[str, Mapping[str, Any]]
    needs: Mapping[str, tuple[str, ...]]
    is_dag: bool

    @classmethod
    def of(cls, definition: Mapping[str, Any]) -> Graph:
        """The graph of a definition as stored (`{"steps": [...]}`); a repeated id keeps its first
        step, so a broken definition still reads as one graph."""
        steps: dict[str, Mapping[str, Any]] = {}
        for step in definition.get("steps") or ():
            steps.setdefault(str(step["id"]), step)
        order = tuple(steps)
        is_dag = any(step.get("needs") is not None for step in steps.values())
        needs: dict[str, tuple[str, ...]] = {}
        for index, step_id in enumerate(order):
            if is_dag:
                needs[step_id] = tuple(
                    dict.fromkeys(str(n) for n in steps[step_id].get("needs") or ())
                )
            else:
                needs[step_id] = (order[index - 1],) if index else ()
        return cls(order=order, steps=steps, needs=needs, is_dag=is_dag)

    def _known_needs(self, step_id: str) -> tuple[str, ...]:
        return tuple(n for n in self.needs.get(step_id, ()) if n in self.steps)

    def dependants(self, step_id: str) -> tuple[str, ...]:
        """The steps that directly need `step_id`, in list order."""
        return tuple(s for s in self.order if step_id in self.needs[s])

    def upstream(self, step_id: str) -> frozenset[str]:
        """Every step `step_id` needs, directly or not (itself only through a cycle)."""
        seen: set[str] = set()
        todo = list(self._known_needs(step_id))
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self._known_needs(current))
        return frozenset(seen)

    def roots(self) -> tuple[str, ...]:
        """The steps that need no (known) step, in list order."""
        return tuple(s for s in self.order if not self._known_needs(s))

    def leaves(self) -> tuple[str, ...]:
        """The steps no step needs, in list order."""
        needed = {n for s in self.order for n in self.needs[s]}
        return tuple(s for s in self.order if s not in needed)

    def cycle(self) -> list[str] | None:
        """A cycle in the direction the work flows (`["a", "b", "a"]`: b needs a, a needs b),
        starting at its first step in list order; None for a DAG."""
        # Follow needs depth first; a need found on the current path closes a cycle.
        done: set[str] = set()
        for start in self.order:
            if start in done:
                continue
            path: list[str] = [start]
            on_path = {start}
            pending = [iter(self._known_needs(start))]
            while pending:
                need = next(pending[-1], None)
                if need is None:
                    pending.pop()
                    done.add(path[-1])
                    on_path.discard(path.pop())
                elif need in on_path:
                    loop = path[path.index(need) :]
                    return self._flowing(loop)
                elif need not in done:
                    path.append(need)
                    on_path.add(need)
                    pending.append(iter(self._known_needs(need)))
        return None

    def _flowing(self, loop: list[str]) -> list[str]:
        # `loop` follows needs (each needs the next, the last needs the first): reverse it to the
        # direction of the work and start at the member that comes first in the list.
        flow = list(reversed(loop))
        first = min(flow, key=self.order.index)
        at = flow.index(first)
        flow = flow[at:] + flow[:at]
        return [*flow, first]

    def layers(self) -> dict[str, int]:
        """Each step's layer for drawing: the longest path from a root (roots are 0). Steps on a
        cycle get a layer after the steps they need that have one."""
        layer: dict[str, int] = {}
        remaining = {s: len(set(self._known_needs(s))) for s in self.order}
        ready = [s for s in self.order if remaining[s] == 0]
        while ready:
            current = ready.pop(0)
            layer[current] = max((layer[n] + 1 for n in self._known_needs(current)), default=0)
            for dependant in self.dependants(current):
                remaining[dependant] -= 1
                if remaining[dependant] == 0:
                    ready.append(dependant)
        for step_id in self.order:  # only steps on or behind a cycle are left
            if step_id not in layer:
                known = [layer[n] + 1 for n in self._known_needs(step_id) if n in layer]
                layer[step_id] = max(known, default=0)
        return {s: layer[s] for s in self.order}
