"""`http`: call an outside HTTP API. Every connection, redirects included, goes through the
address guard in `taskloom.net`, so a workflow cannot reach the worker's own network. Error
messages name the host, never header values or the URL (both may carry tokens).

With `connection` (an `http` connection's name or id: a base URL and auth headers, stored
encrypted), `url` is a path under the connection's base URL (or an absolute URL under it), and
the connection's headers are added to the request. The request may not leave the base URL; its
headers are dropped on a redirect to another host, like any credential header; and their values
are replaced by `[connection:NAME]` in what the step returns or reports."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx
from pydantic import ConfigDict, Field, field_validator, model_validator

from taskloom import __version__
from taskloom.crypto import CredentialKeyError
from taskloom.db.tenancy import tenant_transaction
from taskloom.executions.steps.base import RetryableStepError, StepArgs, StepContext, StepError
from taskloom.net import TargetNotAllowed
from taskloom.observability.request_id import current_request_id
from taskloom.observability.secret_values import forms, replace_all
from taskloom.outbound import ResponseTooLarge, read_at_most
from taskloom.outbound_pool import OutboundPool, PoolKey, fingerprint
from taskloom.tools import service as connections

MAX_REDIRECTS = 5
ERROR_BODY_CHARS = 500
_ERROR_BODY_BYTES = 4 * ERROR_BODY_CHARS  # enough bytes for 500 characters of UTF-8
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header name (RFC 9110)
# User headers that still make sense, and hold no secret, after a redirect to another host.
_KEPT_ACROSS_HOSTS = frozenset(
    {"accept", "content-type", "idempotency-key", "user-agent", "x-request-id"}
)

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]


class HttpArgs(StepArgs):
    # Inputs are hidden in validation errors: header values and URLs may hold tokens.
    model_config = ConfigDict(
        extra="forbid", validate_by_name=True, validate_by_alias=True, hide_input_in_errors=True
    )

    method: Method = "GET"
    url: str
    connection: str | None = Field(default=None, min_length=1, max_length=200)
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str | int | float | bool] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    timeout_seconds: float | None = Field(default=None, gt=0)
    expect_status: list[int] | None = Field(default=None, min_length=1)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _http_url(self) -> HttpArgs:
        try:
            url = httpx.URL(self.url)
        except httpx.InvalidURL:
            raise ValueError("url is not a valid URL") from None
        if self.connection is not None and not url.is_absolute_url:
            return self  # a path under the connection's base URL
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("url must be an absolute http:// or https:// URL")
        return self

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not _TOKEN.match(name):
                raise ValueError("header names may only hold letters, digits and !#$%&'*+-.^_`|~")
            if any(c in header_value for c in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} contains a line break or NUL")
        return value

    @field_validator("expect_status")
    @classmethod
    def _statuses(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(not 100 <= status <= 599 for status in value):
            raise ValueError("expect_status values must be HTTP statuses (100-599)")
        return value


def _is_json(response: httpx.Response) -> bool:
    media_type: str = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _text(response: httpx.Response, body: bytes) -> str:
    try:
        return body.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        return body.decode("utf-8", errors="replace")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity: not storable as JSON


def _body(response: httpx.Response, body: bytes) -> Any:
    """Parsed JSON when the response says it is JSON and it parses, else the text."""
    if _is_json(response) and body:
        try:
            return json.loads(body, parse_constant=_reject_constant)
        except ValueError:
            pass
    return _text(response, body)


def _headers(response: httpx.Response) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        key = name.lower()
        if key == "set-cookie":  # session secrets of the remote service; never stored
            continue
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _redirect(previous: httpx.Request, next_request: httpx.Request, user: set[str]) -> None:
    """Vet the redirect httpx built (method and body already adjusted per RFC 9110). To
    another host, the user's headers are dropped (they may be that API's credentials)."""
    if next_request.url.scheme not in ("http", "https"):
        raise StepError(
            f"{previous.url.host} redirected to a {next_request.url.scheme}: URL; "
            "only http and https are followed",
            code="redirect_not_allowed",
        )
    if next_request.url.host != previous.url.host:
        for name in user - _KEPT_ACROSS_HOSTS:
            next_request.headers.pop(name, None)


def _translate(exc: Exception, host: str, timeout: float) -> StepError:
    """The step error for a failed exchange. Never quotes httpx's text: h11's errors may
    include a header value."""
    if isinstance(exc, TargetNotAllowed):
        details = {"host": exc.host, "address": exc.address, "reason": exc.reason}
        return StepError(str(exc), code="target_not_allowed", details=details)
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return RetryableStepError(
            f"{host} did not answer within {timeout:g} s", code="http_timeout"
        )
    if (refused := _certificate_error(exc)) is not None:
        # A retry meets the same certificate: fail now, saying why.
        return StepError(
            f"the TLS certificate of {host} was not accepted ({refused.verify_message})",
            code="tls_certificate_invalid",
        )
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return RetryableStepError(
            f"could not talk to {host} ({type(exc).__name__})", code="http_connection_error"
        )
    return StepError(
        f"the request to {host} could not be sent ({type(exc).__name__})",
        code="http_request_invalid",
    )


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind an httpx error, if that is what it was."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


_UNPOOLED = OutboundPool(max_clients=0)  # a step run outside a worker (no runtime)


def _pool_key(ctx: StepContext, url: httpx.URL, via: _Via | None = None) -> PoolKey:
    """The organization's pooled client for the URL's origin (or its http connection's, keyed
    like every connection: a changed base URL or header never reuses the old one). Each call
    still has a client of its own (headers, cookies); only kept-alive connections are shared,
    and only within one organization. Redirects to another host open sockets in the same
    client, guarded alike."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return PoolKey(
        org=str(ctx.org_id),
        kind="http",
        owner=via.id if via is not None else f"{url.scheme}://{url.host}:{port}",
        fingerprint=via.fingerprint if via is not None else "",
        flavor="httpx",
        policy=ctx.settings.outbound_allowed_hosts,
    )


@dataclass(frozen=True)
class _Via:
    """The `http` connection a step sends through: its base URL and its headers."""

    id: str
    name: str
    base_url: httpx.URL
    headers: dict[str, str]
    fingerprint: str

    def url(self, target: str) -> httpx.URL:
        """`target` under the base URL, or StepError if it would leave it."""
        base = self.base_url
        url = (
            httpx.URL(target)
            if httpx.URL(target).is_absolute_url
            else base.join(target.lstrip("/"))
        )
        prefix = base.raw_path.split(b"?")[0]
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port) or not (
            url.raw_path.split(b"?")[0].startswith(prefix)
        ):
            raise StepError(
                f"url is not under the base URL of connection {self.name!r}",
                code="url_outside_connection",
            )
        return url

    def hide(self, value: Any) -> Any:
        """`value` with the connection's header values replaced by `[connection:NAME]`."""
        pairs = [
            (form, f"[connection:{self.name}]")
            for secret in self.headers.values()
            if len(secret) >= 4
            for form in forms(secret)
        ]
        return _hidden(value, sorted(pairs, key=lambda pair: -len(pair[0])))


def _hidden(value: Any, pairs: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        return replace_all(value, pairs)
    if isinstance(value, dict):
        return {replace_all(str(k), pairs): _hidden(v, pairs) for k, v in value.items()}
    if isinstance(value, list):
        return [_hidden(item, pairs) for item in value]
    return value


async def _via(ref: str, ctx: StepContext) -> _Via:
    runtime = ctx.require_runtime()
    async with tenant_transaction(runtime.database, org_id=ctx.org_id, user_id=None) as db:
        row = await connections.find_connection(db=db, org_id=ctx.org_id, ref=ref, provider="http")
    if row is None:
        raise StepError(f"no http connection {ref!r}", code="connection_not_found")
    if not row.enabled:
        raise StepError(f"connection {row.name!r} is disabled", code="connection_disabled")
    try:
        found = connections.decrypted(row, runtime.cipher)
    except CredentialKeyError as error:
        raise StepError(str(error), code="credentials_undecryptable") from None
    headers = {str(k): str(v) for k, v in found.credentials.get("headers", {}).items()}
    return _Via(
        id=str(row.id),
        name=row.name,
        base_url=httpx.URL(found.base_url + "/"),
        headers=headers,
        fingerprint=fingerprint(found.base_url, headers),
    )


class HttpStep:
    """Sends one request (following up to 5 redirects) and returns status, headers, body."""

    name: ClassVar[str] = "http"
    Args: ClassVar[type[StepArgs]] = HttpArgs

    async def run(self, args: HttpArgs, ctx: StepContext) -> Any:
        if args.connection is None:
            return await self._send(args, ctx, None)
        via = await _via(args.connection, ctx)
        try:
            return via.hide(await self._send(args, ctx, via))
        except StepError as error:
            error.message = via.hide(error.message)
            error.details = via.hide(error.details)
            raise

    async def _send(self, args: HttpArgs, ctx: StepContext, via: _Via | None) -> Any:
        settings = ctx.settings
        cap = settings.http_step_timeout_seconds
        timeout = min(args.timeout_seconds or cap, cap)
        headers = httpx.Headers({"User-Agent": f"Taskloom/{__version__}"})
        headers.update(args.headers)
        if via is not None:
            headers.update(via.headers)  # the connection's own win over the step's
        if "idempotency-key" not in headers:
            headers["Idempotency-Key"] = ctx.idempotency_key
        if "x-request-id" not in headers and (request_id := current_request_id()):
            headers["X-Request-ID"] = request_id  # the API request that started the execution
        # `query` adds to (or replaces keys of) the URL's own query; httpx's `params=` would
        # drop the URL's query entirely.
        target = via.url(args.url) if via is not None else httpx.URL(args.url)
        url = target.copy_merge_params(args.query)
        credentials = {name.lower() for name in args.headers}
        if via is not None:
            credentials |= {name.lower() for name in via.headers}
        pool = ctx.runtime.outbound if ctx.runtime is not None else _UNPOOLED
        async with (
            pool.transport(_pool_key(ctx, url, via)) as transport,
            httpx.AsyncClient(
                transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
            ) as client,
        ):
            request = client.build_request(args.method, url, headers=headers, json=args.json_body)
            hops = [request]
            try:
                async with asyncio.timeout(timeout):  # the whole exchange, redirects included
                    return await self._exchange(
                        client, hops, args, credentials, settings.http_step_max_response_bytes
                    )
            except StepError:
                raise
            except (TargetNotAllowed, TimeoutError, httpx.HTTPError) as exc:
                raise _translate(exc, hops[-1].url.host, timeout) from None

    async def _exchange(
        self,
        client: httpx.AsyncClient,
        hops: list[httpx.Request],
        args: HttpArgs,
        user_headers: set[str],
        limit: int,
    ) -> Any:
        """Send hops[-1], following redirects (each appended to `hops`) up to MAX_REDIRECTS.
        `user_headers`: the step's and its connection's headers (lower case)."""
        while True:
            response = await client.send(hops[-1], stream=True)
            try:
                follow = response.next_request
                if follow is None or response.status_code in (args.expect_status or ()):
                    return await self._result(response, args, limit)
                if len(hops) > MAX_REDIRECTS:
                    raise StepError(
                        f"more than {MAX_REDIRECTS} redirects, starting at {hops[0].url.host}",
                        code="too_many_redirects",
                    )
                _redirect(hops[-1], follow, user_headers)
                hops.append(follow)
            finally:
                await response.aclose()

    async def _result(self, response: httpx.Response, args: HttpArgs, limit: int) -> Any:
        status = response.status_code
        if args.expect_status is not None:
            ok = status in args.expect_status
        else:
            ok = 200 <= status <= 299
        if ok:
            try:
                body = await read_at_most(response, limit, truncate=False)
            except ResponseTooLarge as too_large:
                # Not retryable: a retry would get the same answer.
                raise StepError(
                    str(too_large), code="response_too_large", details={"limit_bytes": limit}
                ) from None
            return {"status": status, "headers": _headers(response), "body": _body(response, body)}
        snippet = _text(response, await read_at_most(response, _ERROR_BODY_BYTES, truncate=True))
        details = {"status": status, "body": snippet[:ERROR_BODY_CHARS]}
        message = f"{response.url.host} answered HTTP {status}"
        if status == 429 or 500 <= status <= 599:
            raise RetryableStepError(message, code="http_status", details=details)
        raise StepError(message, code="http_status", details=details)
