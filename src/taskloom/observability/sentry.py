"""Unexpected errors to Sentry, when SENTRY_DSN is set: 500s of the API, steps that crashed,
worker errors, and start-ups that failed. Captured explicitly where they happen (no automatic
integrations patching the frameworks), never with personal data, and nothing at all when unset."""

from __future__ import annotations

from typing import Any

from taskloom import __version__
from taskloom.config import Settings
from taskloom.observability import secret_values

_enabled = False


def configure(settings: Settings, *, service: str) -> bool:
    global _enabled
    if _enabled or settings.sentry_dsn is None:
        return _enabled
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.taskloom_env.value,
        release=f"taskloom@{__version__}",
        server_name=service,
        send_default_pii=False,
        # Frame locals would carry secrets (a Redis URL with its password was caught in a
        # test): stack traces go without variables.
        include_local_variables=False,
        max_request_body_size="never",
        default_integrations=False,
        traces_sample_rate=0.0,
        before_send=_without_secret_values,
    )
    _enabled = True
    return True


def _without_secret_values(event: Any, hint: Any) -> Any:
    """The event with organization secrets' values a running execution holds replaced by
    `[secret:NAME]` in every string (an exception's message may quote one)."""
    return _scrubbed(event)


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return secret_values.scrub(value)
    if isinstance(value, dict):
        return {key: _scrubbed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(item) for item in value]
    return value


def capture(error: BaseException, **tags: Any) -> None:
    if not _enabled:
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        for key, value in tags.items():
            if value is not None:
                scope.set_tag(key, str(value))
        sentry_sdk.capture_exception(error)


def flush(*, timeout: float | None = None) -> None:
    """Send what is queued (on exit), for up to `timeout` seconds (default 2)."""
    if _enabled:
        import sentry_sdk

        sentry_sdk.flush(timeout=2.0 if timeout is None else timeout)
