"""The HTTP client a provider talks through: the outbound address guard (an organization's base
URL must not reach the worker's own network unless OUTBOUND_ALLOWED_HOSTS says so), one timeout,
no proxies from the environment, and the request id of the action that caused the call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2

from taskloom import __version__
from taskloom.config import Settings
from taskloom.net import AddressPolicy, guarded_transport, guarded_transport2
from taskloom.observability.request_id import current_request_id
from taskloom.tools.registry import HTTPX2_PROVIDERS


def _headers() -> dict[str, str]:
    headers = {"User-Agent": f"Taskloom/{__version__}"}
    if request_id := current_request_id():
        headers["X-Request-ID"] = request_id
    return headers


@asynccontextmanager
async def provider_client(
    settings: Settings, provider: str, *, timeout_seconds: float | None = None
) -> AsyncIterator[Any]:
    """An httpx (or, for SDK-based providers, httpx2) AsyncClient for one call."""
    policy = AddressPolicy.from_setting(settings.outbound_allowed_hosts)
    seconds = timeout_seconds if timeout_seconds is not None else settings.tool_timeout_seconds
    if provider in HTTPX2_PROVIDERS:
        async with httpx2.AsyncClient(
            transport=guarded_transport2(policy),
            timeout=seconds,
            headers=_headers(),
            follow_redirects=False,
            trust_env=False,
        ) as client2:
            yield client2
    else:
        async with httpx.AsyncClient(
            transport=guarded_transport(policy),
            timeout=seconds,
            headers=_headers(),
            follow_redirects=False,
            trust_env=False,
        ) as client:
            yield client
