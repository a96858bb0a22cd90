"""Secret values this process holds in clear for a running execution, so that log lines and
spans never carry them: the log renderer and the span exporter replace each with
`[secret:NAME]`. Values are held while an execution that resolved them runs, and for
`GRACE_SECONDS` after (spans are exported in batches, a little later). With none held, scrubbing
is one dictionary check.

The executions domain holds and releases values (taskloom/secrets/resolution.py); this module
knows nothing of where they come from."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable

GRACE_SECONDS = 120.0

_lock = threading.Lock()
_held: dict[str, tuple[str, int, float]] = {}  # value -> (name, holders, forget after)
_forms: list[tuple[str, str]] = []  # (form of a value as text, its replacement), longest first


def marker(name: str) -> str:
    return f"[secret:{name}]"


def forms(value: str) -> list[str]:
    """How a value may appear in text: as it is, and JSON-escaped (inside a JSON line)."""
    escaped = json.dumps(value)[1:-1]
    return [value] if escaped == value else [value, escaped]


def replace_all(text: str, pairs: Iterable[tuple[str, str]]) -> str:
    for form, replacement in pairs:
        if form in text:
            text = text.replace(form, replacement)
    return text


def hold(values: dict[str, str]) -> None:
    """Values (by name) an execution resolved; each `hold` is matched by one `release`."""
    with _lock:
        for name, value in values.items():
            _, holders, _ = _held.get(value, (name, 0, 0.0))
            _held[value] = (name, holders + 1, 0.0)
        _rebuild()


def release(values: dict[str, str]) -> None:
    now = time.monotonic()
    with _lock:
        for name, value in values.items():
            _, holders, _ = _held.get(value, (name, 1, 0.0))
            _held[value] = (name, max(holders - 1, 0), now + GRACE_SECONDS)
        _rebuild()


def _rebuild() -> None:
    now = time.monotonic()
    for value in [v for v, (_, n, until) in _held.items() if n == 0 and until <= now]:
        del _held[value]
    pairs = [(form, marker(name)) for value, (name, _, _) in _held.items() for form in forms(value)]
    _forms[:] = sorted(pairs, key=lambda pair: -len(pair[0]))


def scrub(text: str) -> str:
    """`text` with every held value replaced by its marker."""
    if not _forms:
        return text
    if any(n == 0 and until <= time.monotonic() for _, n, until in _held.values()):
        with _lock:
            _rebuild()
    return replace_all(text, list(_forms))
