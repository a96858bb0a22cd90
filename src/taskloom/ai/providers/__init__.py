"""AI providers, one module per official SDK (`anthropic.py`, `openai.py`), and the few rules
they share: the JSON-only instruction, the bound on one call, and how a provider's HTTP error
becomes an `AiProviderError` (code, retryable, a quoted message that never holds the key)."""

from __future__ import annotations

from typing import Any

import httpx2

from taskloom.ai.providers.base import AiProviderError
from taskloom.net import TargetNotAllowed

JSON_ONLY_INSTRUCTION = (
    "Answer with exactly one JSON object and nothing else: no text before or after it and no "
    "Markdown code fences."
)

# Longest wait between two attempts that a call allows for. Anthropic's SDK waits as long as a
# `retry-after` header says (any length), OpenAI's up to 120 s; `call_deadline` bounds the sum.
RETRY_WAIT_ALLOWANCE_SECONDS = 60.0

_QUOTE_LIMIT = 300


def system_prompt(system: str | None, *, json_output: bool) -> str | None:
    """The system prompt to send: the caller's, plus the JSON-only instruction when asked."""
    if not json_output:
        return system
    return f"{system}\n\n{JSON_ONLY_INSTRUCTION}" if system else JSON_ONLY_INSTRUCTION


def call_deadline(*, timeout: float, max_retries: int) -> float:
    """Seconds that one `complete` call may take, all of the SDK's attempts and waits included:
    each attempt gets `timeout` plus one allowed wait."""
    return (timeout + RETRY_WAIT_ALLOWANCE_SECONDS) * (max_retries + 1)


def quote(message: object, *, api_key: str) -> str:
    """A provider's error message fit to show: one line, the key replaced, at most 300 chars."""
    text = " ".join(str(message).split()) if message is not None else ""
    if api_key:
        text = text.replace(api_key, "[redacted]")  # before trimming, so no piece of it survives
    return text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 1] + "…"


def status_error(
    *, provider: str, status: int, error_type: str | None, message: object, api_key: str
) -> AiProviderError:
    """The error for an HTTP error status the SDK gave up on (after its retries)."""
    code, retryable = _classify(status, error_type)
    quoted = quote(message, api_key=api_key) or "no error message"
    return AiProviderError(
        f"{provider} answered {status}: {quoted}", code=code, retryable=retryable, status=status
    )


def unreachable_error(
    *, provider: str, base_url: str, error: BaseException, api_key: str
) -> AiProviderError:
    """The error for a connection the SDK could not make (after its retries), naming the
    underlying cause: "Connection refused", a TLS failure, the outbound address policy's refusal.
    A refusal is not retryable: it holds until an operator changes the policy."""
    causes = _causes(error)
    host = httpx2.URL(base_url).host
    for cause in causes:
        if isinstance(cause, TargetNotAllowed):
            return refused_error(cause)
    detail = quote(causes[-1], api_key=api_key) if len(causes) > 1 else ""
    message = f"{provider} could not be reached at {host}"
    return AiProviderError(
        f"{message}: {detail}" if detail else message, code="ai_unreachable", retryable=True
    )


def transport_error(
    err: BaseException,
    *,
    sdk: Any,
    provider: str,
    timeout: float,
    deadline: float,
    base_url: str,
    api_key: str,
) -> AiProviderError:
    """The error for everything but an HTTP error status, the same for both SDKs (`sdk` is the
    `anthropic` or `openai` module): a timeout of one attempt or of the whole call, a connection
    that could not be made, a refused base URL, any other SDK error."""
    if isinstance(err, sdk.APITimeoutError):
        return AiProviderError(
            f"{provider} did not answer within {timeout:g} s", code="ai_timeout", retryable=True
        )
    if isinstance(err, sdk.APIConnectionError):
        return unreachable_error(provider=provider, base_url=base_url, error=err, api_key=api_key)
    if isinstance(err, TargetNotAllowed):
        return refused_error(err)
    if isinstance(err, TimeoutError):
        return AiProviderError(
            f"{provider} did not finish within {deadline:g} s, retries included",
            code="ai_timeout",
            retryable=True,
        )
    return AiProviderError(
        f"{provider} call failed: {type(err).__name__}", code="ai_error", retryable=False
    )


def refused_error(refusal: TargetNotAllowed) -> AiProviderError:
    """The error for a base URL the outbound address policy (taskloom.net) refuses. Anthropic's
    SDK wraps the refusal in a connection error (and retries it), OpenAI's lets it through."""
    return AiProviderError(str(refusal), code="ai_target_not_allowed", retryable=False)


def _causes(error: BaseException) -> list[BaseException]:
    """`error` and what it was raised from, outermost first."""
    chain = [error]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None:
        if inner in chain:
            break
        chain.append(inner)
    return chain


def _classify(status: int, error_type: str | None) -> tuple[str, bool]:
    if status == 529 or error_type == "overloaded_error":
        return "ai_overloaded", True
    if status == 429:
        return "ai_rate_limited", True
    if status == 408:
        return "ai_timeout", True
    if status == 409 or status >= 500:
        return "ai_server_error", True
    if status in (401, 402, 403):  # the key is wrong, or its account may not make this call
        return "ai_auth_failed", False
    if status == 404:
        return "ai_not_found", False
    return "ai_bad_request", False
