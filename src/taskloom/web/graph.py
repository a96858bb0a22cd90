"""A workflow definition drawn as inline SVG on the server: the graph of its steps (layered left
to right, an arrow for each need) and an execution's timeline. No script and no `style`
attribute (the CSP is `style-src 'self'`): colours come from classes in static/app.css —
`type-<type>` fills a node, `status-<status>` outlines it, `conditional` dashes a step with
`when`. Every text and attribute value is escaped: step ids and types come from tenants."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

from taskloom.workflows.graph import Graph

NODE_WIDTH = 168
NODE_HEIGHT = 48
COLUMN_GAP = 56
ROW_GAP = 20
MARGIN = 12
LABEL_CHARS = 18  # longer ids are cut with "…" (the tooltip has the whole id)
CAPTION_CHARS = 27  # the smaller second line: type and status

TIMELINE_LABEL_WIDTH = 160
TIMELINE_BAR_WIDTH = 480
TIMELINE_ROW = 22

STATUSES = frozenset(
    {"pending", "running", "succeeded", "failed", "skipped", "waiting", "cancelled"}
)
_CLASS_UNSAFE = re.compile(r"[^a-z0-9_-]")


@dataclass(frozen=True)
class StepView:
    """What an execution page knows of one step: its status, for-each progress (`done` of
    `total` items, when the step has items) and when it ran."""

    status: str
    done: int | None = None
    total: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


def _type_class(step_type: object) -> str:
    return "type-" + (_CLASS_UNSAFE.sub("", str(step_type).lower())[:32] or "other")


def _status_class(status: str) -> str:
    return f"status-{status}" if status in STATUSES else "status-unknown"


def _label(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _attrs(**values: object) -> str:
    return "".join(
        f' {name.rstrip("_").replace("_", "-")}="{escape(str(value))}"'
        for name, value in values.items()
    )


def _positions(graph: Graph) -> dict[str, tuple[int, int]]:
    """Top-left corner of each node: the column is the step's layer, the row its place among
    the steps of that layer in list order."""
    layers = graph.layers()
    rows: dict[int, int] = {}
    placed: dict[str, tuple[int, int]] = {}
    for step_id in graph.order:
        column = layers[step_id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        placed[step_id] = (
            MARGIN + column * (NODE_WIDTH + COLUMN_GAP),
            MARGIN + row * (NODE_HEIGHT + ROW_GAP),
        )
    return placed


def render_graph(graph: Graph, statuses: Mapping[str, StepView] | None = None) -> Markup:
    """The steps as boxes (id and type; with `statuses`, each step's status and for-each
    progress) and the needs as arrows from the needed step to the one that needs it."""
    at = _positions(graph)
    width = max((x for x, _ in at.values()), default=0) + NODE_WIDTH + MARGIN
    height = max((y for _, y in at.values()), default=0) + NODE_HEIGHT + MARGIN
    edges = [(need, step) for step in graph.order for need in graph.needs[step] if need in at]
    label = f"Workflow graph: {len(graph.order)} steps, {len(edges)} dependencies"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" role="img"'
        f"{_attrs(aria_label=label, width=width, height=height, viewBox=f'0 0 {width} {height}')}>",
        '<defs><marker id="graph-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8"'
        ' markerHeight="8" orient="auto-start-reverse"><path class="arrow-head"'
        ' d="M0,0 L10,5 L0,10 z"/></marker></defs>',
    ]
    for need, step in edges:
        (x1, y1), (x2, y2) = at[need], at[step]
        x1, y1, y2 = x1 + NODE_WIDTH, y1 + NODE_HEIGHT // 2, y2 + NODE_HEIGHT // 2
        middle = (x1 + x2) // 2
        path = f"M{x1},{y1} C{middle},{y1} {middle},{y2} {x2},{y2}"
        parts.append(
            f'<path class="edge" marker-end="url(#graph-arrow)"'
            f"{_attrs(d=path, data_from=need, data_to=step)}/>"
        )
    for step_id in graph.order:
        parts.append(_node(graph, step_id, at[step_id], statuses))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every value in it went through escape())


def _node(
    graph: Graph,
    step_id: str,
    at: tuple[int, int],
    statuses: Mapping[str, StepView] | None,
) -> str:
    step = graph.steps[step_id]
    step_type = str(step.get("type", ""))
    classes = ["node", _type_class(step_type)]
    if step.get("when") is not None:
        classes.append("conditional")
    view = statuses.get(step_id, StepView("pending")) if statuses is not None else None
    caption = step_type
    tooltip = [f"{step_id} ({step_type})"]
    if step.get("when") is not None:
        tooltip.append(f"when {step['when']}")
    if step.get("for_each") is not None:
        tooltip.append(f"for each of {step['for_each']}")
    if view is not None:
        classes.append(_status_class(view.status))
        caption = f"{step_type} · {view.status}"
        tooltip.append(view.status)
    x, y = at
    where = f"translate({x},{y})"
    parts = [
        f"<g{_attrs(class_=' '.join(classes), data_step=step_id, transform=where)}>",
        f"<title>{escape(' — '.join(tooltip))}</title>",
        f'<rect width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6" ry="6"/>',
        f'<text class="node-id" x="10" y="20">{escape(_label(step_id))}</text>',
        f'<text class="node-type" x="10" y="38">{escape(_label(caption, CAPTION_CHARS))}</text>',
    ]
    if view is not None and view.total is not None and step.get("for_each") is not None:
        progress = f"{view.done or 0}/{view.total}"
        parts.append(
            f'<text class="node-badge" x="{NODE_WIDTH - 8}" y="20" text-anchor="end">'
            f"{escape(progress)}</text>"
        )
    parts.append("</g>")
    return "".join(parts)


def render_timeline(
    graph: Graph, statuses: Mapping[str, StepView], *, now: datetime | None = None
) -> Markup:
    """One bar per step that started: its start offset from the first step's start and its
    duration (a running step's bar ends now)."""
    now = now or datetime.now(UTC)
    started = [
        (step_id, view)
        for step_id in graph.order
        if (view := statuses.get(step_id)) is not None and view.started_at is not None
    ]
    origin = min((v.started_at for _, v in started if v.started_at), default=now)
    ends = [(v.finished_at or now) for _, v in started]
    span = max(((end - origin).total_seconds() for end in ends), default=0.0) or 1.0
    scale = TIMELINE_BAR_WIDTH / span
    width = TIMELINE_LABEL_WIDTH + TIMELINE_BAR_WIDTH + 2 * MARGIN
    height = MARGIN * 2 + TIMELINE_ROW * (len(started) + 1)
    label = f"Timeline of {len(started)} steps over {_seconds(span)}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img"'
        f"{_attrs(aria_label=label, width=width, height=height, viewBox=f'0 0 {width} {height}')}>",
    ]
    left = MARGIN + TIMELINE_LABEL_WIDTH
    for row, (step_id, view) in enumerate(started):
        assert view.started_at is not None
        offset = (view.started_at - origin).total_seconds()
        took = ((view.finished_at or now) - view.started_at).total_seconds()
        y = MARGIN + row * TIMELINE_ROW
        bar_x = left + round(offset * scale)
        bar_width = max(2, round(took * scale))
        tooltip = f"{step_id}: {view.status}, started at +{_seconds(offset)}, took {_seconds(took)}"
        parts.append(
            f"<g{_attrs(class_=f'bar {_status_class(view.status)}', data_step=step_id)}>"
            f"<title>{escape(tooltip)}</title>"
            f'<text class="bar-label" x="{MARGIN}" y="{y + 15}">{escape(_label(step_id))}</text>'
            f'<rect x="{bar_x}" y="{y + 3}" width="{bar_width}"'
            f' height="{TIMELINE_ROW - 6}" rx="3"/>'
            "</g>"
        )
    axis_y = MARGIN + len(started) * TIMELINE_ROW + 15
    parts.append(
        f'<g class="axis"><text x="{left}" y="{axis_y}">0 s</text>'
        f'<text x="{left + TIMELINE_BAR_WIDTH}" y="{axis_y}" text-anchor="end">'
        f"{escape(_seconds(span))}</text></g></svg>"
    )
    return Markup("".join(parts))  # noqa: S704 (every value in it went through escape())


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"
