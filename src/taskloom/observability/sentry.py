"""Unexpected errors to Sentry, when SENTRY_DSN is set: 500s of the API, steps that crashed,
worker errors, and start-ups that failed. Captured explicitly where they happen (no automatic
integrations patching the frameworks), never with personal data, and nothing at all when unset."""

from __future__ import annotations

from typing import Any

from taskloom import __version__
from taskloom.config import Settings

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
    )
    _enabled = True
    return True


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
