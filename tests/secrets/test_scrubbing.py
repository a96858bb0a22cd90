"""While an execution holds a secret's value, no log line (structlog's or a library's, as text or
JSON-escaped) and no exported span carries it: each says `[secret:NAME]`. After the execution
lets go (and a grace period for spans still queued), the values are forgotten."""

from __future__ import annotations

import io
import json
import logging
import sys
import time

import pytest
import structlog

from taskloom.config import Settings
from taskloom.observability import secret_values, sentry
from taskloom.observability.logging import configure_logging
from taskloom.observability.span_scrubbing import scrub_attributes, scrub_text

VALUE = 'tl-log-"quoted"-\\value'


def test_log_lines_carry_the_name_of_a_held_secret_never_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    secret_values.hold({"LOGGED": VALUE})
    try:
        configure_logging(Settings(_env_file=None, log_json=True))  # type: ignore[call-arg]
        structlog.get_logger("taskloom.test").warning("failed", error=f"bad token {VALUE}")
        logging.getLogger("some.library").warning("library says %s", VALUE)
        try:
            raise ValueError(VALUE)
        except ValueError:
            structlog.get_logger("taskloom.test").exception("crashed")
    finally:
        secret_values.release({"LOGGED": VALUE})
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
    text = stream.getvalue()
    assert "tl-log-" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["error"] == "bad token [secret:LOGGED]"
    assert lines[1]["event"] == "library says [secret:LOGGED]"
    assert "[secret:LOGGED]" in lines[2]["exception"]


def test_spans_carry_the_name_and_values_are_forgotten_after_the_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret_values.hold({"SPANNED": "tl-span-value-1"})
    attributes = {
        "url.full": "https://api.example.com/tl-span-value-1/x",
        "note": "tl-span-value-1",
    }
    assert scrub_attributes(attributes) == {
        "url.full": "https://api.example.com/[secret:SPANNED]/x",
        "note": "[secret:SPANNED]",
    }
    secret_values.release({"SPANNED": "tl-span-value-1"})
    assert scrub_text("tl-span-value-1") == "[secret:SPANNED]"  # still within the grace period
    later = time.monotonic() + secret_values.GRACE_SECONDS + 1
    monkeypatch.setattr(secret_values.time, "monotonic", lambda: later)
    assert scrub_text("tl-span-value-1") == "tl-span-value-1"


def test_a_sentry_event_carries_the_name_of_a_held_secret_never_its_value() -> None:
    secret_values.hold({"REPORTED": "tl-sentry-value-9"})
    try:
        event = {
            "exception": {"values": [{"type": "ValueError", "value": "bad tl-sentry-value-9"}]},
            "tags": {"step_id": "call"},
            "extra": [1, "tl-sentry-value-9"],
        }
        sent = sentry._without_secret_values(event, {})
    finally:
        secret_values.release({"REPORTED": "tl-sentry-value-9"})
    assert sent["exception"]["values"][0]["value"] == "bad [secret:REPORTED]"
    assert sent["extra"] == [1, "[secret:REPORTED]"]
    assert sent["tags"] == {"step_id": "call"}
