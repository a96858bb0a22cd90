"""The `http` step against a real local HTTP server, and the outbound-address guard."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from uuid import UUID, uuid4

import httpcore
import httpx
import pytest
from pydantic import ValidationError

from taskloom import __version__
from taskloom.config import Settings
from taskloom.executions.steps import STEP_TYPES
from taskloom.executions.steps.base import RetryableStepError, StepContext, StepError
from taskloom.executions.steps.http import HttpArgs, HttpStep
from taskloom.net import (
    AddressPolicy,
    TargetNotAllowed,
    guarded_transport,
    refusal_reason,
    tls_context,
)
from taskloom.outbound_pool import OutboundPool
from taskloom.runtime import Runtime
from tests.pki import make_pki
from tests.servers import free_port

SECRET = "s3cr3t-t0ken-never-shown"


class _Server(ThreadingHTTPServer):
    calls: Counter[str]
    connections = 0  # TCP connections accepted

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up early
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Routes by path; query parameters steer each route."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str, *extra: tuple[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                for start in range(0, len(body), 65_536):
                    self.wfile.write(body[start : start + 65_536])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _json(self, status: int, value: Any, *extra: tuple[str, str]) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", *extra)

    def _route(self) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.calls[url.path] += 1
        calls = self.server.calls[url.path]
        if url.path == "/json":
            self._json(200, {"hello": "world", "n": 1}, ("Set-Cookie", "sid=1"), *_TRACE)
        elif url.path == "/text":
            self._send(200, b"just text", "text/plain; charset=utf-8")
        elif url.path == "/bad-json":
            self._send(200, b"{not json", "application/json")
        elif url.path.startswith("/flaky/"):
            failing = calls <= int(params["fail"])
            self._json(503 if failing else 200, {"call": calls})
        elif url.path == "/status":
            size = int(params.get("size", 0))
            self._send(int(params["code"]), b"x" * size or b"status body", "text/plain")
        elif url.path == "/slow":
            time.sleep(float(params["seconds"]))
            self._send(200, b"late", "text/plain")
        elif url.path == "/huge":
            self._send(200, b"y" * int(params["size"]), "text/plain")
        elif url.path in ("/redirect", "/loop"):
            target = params.get("to", "/loop")
            self._send(int(params.get("status", 302)), b"", "text/plain", ("Location", target))
        elif url.path == "/echo":
            headers = {name.lower(): value for name, value in self.headers.items()}
            echo = {"method": self.command, "query": url.query, "headers": headers}
            self._json(200, {**echo, "body": body.decode()})
        else:
            self._send(404, b"no such route", "text/plain")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _route


_TRACE = (("X-Trace", "t1"), ("X-Trace", "t2"))


class Remote:
    def __init__(self, server: _Server) -> None:
        self.server = server
        self.port = int(server.server_address[1])

    @property
    def calls(self) -> Counter[str]:
        return self.server.calls

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.calls = Counter()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Remote(server)
    server.shutdown()
    server.server_close()


def make_ctx(allowed: str = "127.0.0.1", **settings: Any) -> StepContext:
    return StepContext(
        settings=Settings(
            _env_file=None,
            taskloom_env="test",
            outbound_allowed_hosts=allowed,
            **settings,
        ),
        org_id=uuid4(),
        execution_id=uuid4(),
        step_id="s1",
        attempt=1,
    )


async def run(args: dict[str, Any], ctx: StepContext | None = None) -> Any:
    validated = HttpStep.Args.model_validate(args)
    assert isinstance(validated, HttpArgs)
    return await HttpStep().run(validated, ctx or make_ctx())


async def failure(args: dict[str, Any], ctx: StepContext | None = None) -> StepError:
    with pytest.raises(StepError) as caught:
        await run(args, ctx)
    return caught.value


# --- success --------------------------------------------------------------------------------


async def test_registered_and_json_output(remote: Remote) -> None:
    assert isinstance(STEP_TYPES["http"], HttpStep)
    out = await run({"url": remote.url("/json")})
    assert out["status"] == 200
    assert out["body"] == {"hello": "world", "n": 1}
    assert out["headers"]["content-type"] == "application/json"
    assert out["headers"]["x-trace"] == "t1, t2"
    assert "set-cookie" not in out["headers"]
    assert all(name == name.lower() for name in out["headers"])
    json.dumps(out)


async def test_text_and_unparseable_json_are_text(remote: Remote) -> None:
    assert (await run({"url": remote.url("/text")}))["body"] == "just text"
    assert (await run({"url": remote.url("/bad-json")}))["body"] == "{not json"
    head = await run({"url": remote.url("/json"), "method": "head"})
    assert head["status"] == 200
    assert head["body"] == ""


async def test_post_json_is_sent_with_idempotency_key(remote: Remote) -> None:
    ctx = make_ctx()
    out = await run(
        {
            "method": "post",
            "url": remote.url("/echo?x=1&n=1"),
            "json": {"a": [1, 2], "b": None},
            "query": {"y": True, "n": 2},
            "headers": {"X-Custom": "yes"},
        },
        ctx,
    )
    echo = out["body"]
    assert echo["method"] == "POST"
    assert json.loads(echo["body"]) == {"a": [1, 2], "b": None}
    assert echo["query"] == "x=1&n=2&y=true"  # query values replace the URL's
    assert echo["headers"]["idempotency-key"] == ctx.idempotency_key
    assert echo["headers"]["user-agent"] == f"Taskloom/{__version__}"
    assert echo["headers"]["content-type"] == "application/json"
    assert echo["headers"]["x-custom"] == "yes"


async def test_user_idempotency_key_wins(remote: Remote) -> None:
    args = {"method": "PUT", "url": remote.url("/echo"), "headers": {"idempotency-key": "mine"}}
    echo = (await run(args))["body"]
    assert echo["method"] == "PUT"
    assert echo["headers"]["idempotency-key"] == "mine"


def test_json_argument_by_alias_or_name() -> None:
    assert HttpArgs.model_validate({"url": "http://a.test/", "json": [1]}).json_body == [1]
    assert HttpArgs.model_validate({"url": "http://a.test/", "json_body": 2}).json_body == 2


# --- status errors, timeouts, size -----------------------------------------------------------


async def test_503_is_retryable_until_it_passes(remote: Remote) -> None:
    args = {"url": remote.url("/flaky/a?fail=2")}
    for _ in range(2):
        error = await failure(args)
        assert isinstance(error, RetryableStepError)
        assert error.code == "http_status"
        assert error.details["status"] == 503
    assert (await run(args))["body"] == {"call": 3}
    assert remote.calls["/flaky/a"] == 3


@pytest.mark.parametrize("status", [429, 500, 502, 504])
async def test_429_and_5xx_are_retryable(remote: Remote, status: int) -> None:
    error = await failure({"url": remote.url(f"/status?code={status}")})
    assert isinstance(error, RetryableStepError)
    assert (error.code, error.details["status"]) == ("http_status", status)


async def test_404_is_not_retryable(remote: Remote) -> None:
    error = await failure({"url": remote.url("/status?code=404&size=5000")})
    assert not isinstance(error, RetryableStepError)
    assert not error.retryable
    assert error.code == "http_status"
    assert error.details == {"status": 404, "body": "x" * 500}


async def test_expect_status(remote: Remote) -> None:
    out = await run({"url": remote.url("/status?code=404"), "expect_status": [404]})
    assert (out["status"], out["body"]) == (404, "status body")
    error = await failure({"url": remote.url("/json"), "expect_status": [201]})
    assert (error.code, error.details["status"]) == ("http_status", 200)


async def test_timeout_is_retryable(remote: Remote) -> None:
    started = time.monotonic()
    error = await failure({"url": remote.url("/slow?seconds=1.5"), "timeout_seconds": 0.3})
    assert isinstance(error, RetryableStepError)
    assert error.code == "http_timeout"
    assert time.monotonic() - started < 1.2


async def test_timeout_is_capped_by_settings(remote: Remote) -> None:
    ctx = make_ctx(http_step_timeout_seconds=0.3)
    started = time.monotonic()
    error = await failure({"url": remote.url("/slow?seconds=1.5"), "timeout_seconds": 60}, ctx)
    assert error.code == "http_timeout"
    assert time.monotonic() - started < 1.2


@pytest.fixture(scope="module")
def tls_remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    """The same server over HTTPS, with a certificate from a CA nobody trusts."""
    pki = make_pki(tmp_path_factory.mktemp("http-pki"))
    server = _Server(("127.0.0.1", 0), _Handler)
    server.calls = Counter()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Remote(server)
    server.shutdown()
    server.server_close()


async def test_an_untrusted_certificate_fails_for_good_saying_so(tls_remote: Remote) -> None:
    url = tls_remote.url("/json").replace("http://", "https://")
    error = await failure({"url": url})
    assert not isinstance(error, RetryableStepError)  # a retry meets the same certificate
    assert error.code == "tls_certificate_invalid"
    assert error.message.startswith("the TLS certificate of 127.0.0.1 was not accepted (")
    assert "certificate" in error.message.removeprefix("the TLS certificate")
    assert tls_remote.calls["/json"] == 0  # nothing was sent


async def test_calls_share_one_tls_context(tls_remote: Remote) -> None:
    """Building a context parses the whole CA bundle; every call used to pay for it."""
    await failure({"url": tls_remote.url("/json").replace("http://", "https://")})
    transports = [guarded_transport(AddressPolicy.from_setting("")) for _ in range(2)]
    contexts = {id(t._pool._ssl_context) for t in transports}  # type: ignore[attr-defined]
    assert contexts == {id(tls_context())}
    assert tls_context().verify_mode == ssl.CERT_REQUIRED
    assert tls_context().check_hostname


async def test_response_too_large(remote: Remote) -> None:
    ctx = make_ctx(http_step_max_response_bytes=65_536)
    error = await failure({"url": remote.url("/huge?size=400000")}, ctx)
    assert not error.retryable
    assert error.code == "response_too_large"
    assert (await run({"url": remote.url("/huge?size=65536")}, ctx))["body"] == "y" * 65_536
    # An error status with a big body stays an http_status error (its body is only sampled).
    error = await failure({"url": remote.url("/status?code=503&size=400000")}, ctx)
    assert (error.code, error.retryable) == ("http_status", True)


async def test_connection_refused_is_retryable() -> None:
    error = await failure({"url": f"http://127.0.0.1:{free_port()}/"})
    assert isinstance(error, RetryableStepError)
    assert error.code == "http_connection_error"


# --- redirects ------------------------------------------------------------------------------


async def test_redirect_is_followed(remote: Remote) -> None:
    assert (await run({"url": remote.url("/redirect?to=/json")}))["body"]["hello"] == "world"
    out = await run({"method": "POST", "url": remote.url("/redirect?to=/echo&status=303")})
    assert out["body"]["method"] == "GET"
    kept = await run({"method": "POST", "url": remote.url("/redirect?to=/echo&status=307")})
    assert kept["body"]["method"] == "POST"


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:{port}/", "loopback"),
    ],
)
async def test_redirect_to_internal_address_is_refused(
    remote: Remote, target: str, reason: str
) -> None:
    location = target.format(port=remote.port)
    error = await failure({"url": remote.url(f"/redirect?to={location}")})
    assert (error.code, error.retryable) == ("target_not_allowed", False)
    assert reason in error.message
    assert error.details["reason"] == reason


async def test_redirect_limits(remote: Remote) -> None:
    before = remote.calls["/loop"]
    error = await failure({"url": remote.url("/loop")})
    assert error.code == "too_many_redirects"
    assert remote.calls["/loop"] - before == 6  # the request and 5 redirects
    error = await failure({"url": remote.url("/redirect?to=ftp://files.example.com/x")})
    assert error.code == "redirect_not_allowed"
    out = await run({"url": remote.url("/redirect?to=/json"), "expect_status": [302]})
    assert out["status"] == 302


async def test_redirect_to_another_host_drops_user_headers(remote: Remote) -> None:
    ctx = make_ctx("127.0.0.1,localhost")
    headers = {"X-Api-Key": SECRET, "Accept": "application/json"}
    same = await run({"url": remote.url("/redirect?to=/echo"), "headers": headers}, ctx)
    assert same["body"]["headers"]["x-api-key"] == SECRET
    other = remote.url("/echo", host="localhost")
    moved = await run({"url": remote.url(f"/redirect?to={other}"), "headers": headers}, ctx)
    echoed = moved["body"]["headers"]
    assert "x-api-key" not in echoed
    assert echoed["accept"] == "application/json"
    assert echoed["idempotency-key"] == ctx.idempotency_key


# --- the address guard ----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_refused_without_allow_list(remote: Remote, host: str) -> None:
    before = remote.calls["/json"]
    error = await failure({"url": remote.url("/json", host=host)}, make_ctx(""))
    assert (error.code, error.retryable) == ("target_not_allowed", False)
    assert "loopback" in error.message
    assert host in error.message
    assert remote.calls["/json"] == before


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://0.0.0.0:{port}/", "unspecified"),
        ("http://[::]:{port}/", "unspecified"),
        ("http://[::ffff:127.0.0.1]:{port}/", "loopback"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[2002:7f00:1::]/", "loopback"),
        ("http://224.0.0.1/", "multicast"),
        ("http://100.64.0.1/", "reserved"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fd00::1]/", "private"),
    ],
)
async def test_non_public_targets_refused(remote: Remote, url: str, reason: str) -> None:
    # 127.0.0.1 is allowed, yet its IPv4-mapped IPv6 form is not: entries match exactly.
    error = await failure({"url": url.format(port=remote.port)})
    assert error.code == "target_not_allowed"
    assert reason in error.message


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.0.0.1"])
async def test_odd_spellings_of_loopback_refused(remote: Remote, host: str) -> None:
    """Whatever the resolver makes of the name is what gets checked (and connected to)."""
    error = await failure({"url": remote.url("/json", host=host)}, make_ctx(""))
    assert error.code == "target_not_allowed"
    assert "loopback" in error.message


@pytest.mark.parametrize(
    ("allowed", "host"),
    [("127.0.0.0/8", "127.0.0.1"), ("localhost", "localhost"), (" LocalHost. , x", "localhost")],
)
async def test_allow_list(remote: Remote, allowed: str, host: str) -> None:
    out = await run({"url": remote.url("/json", host=host)}, make_ctx(allowed))
    assert out["status"] == 200


def test_refusal_reasons() -> None:
    def reason(text: str) -> str | None:
        return refusal_reason(ipaddress.ip_address(text))

    assert reason("8.8.8.8") is None
    assert reason("2606:4700:4700::1111") is None
    assert reason("::ffff:8.8.8.8") is None
    assert reason("64:ff9b::a00:1") == "private"  # NAT64 of 10.0.0.1
    assert reason("fec0::1") == "private"
    assert reason("ff02::1") == "multicast"
    assert reason("255.255.255.255") is not None


async def test_guard_refuses_at_connect_time_through_httpx(remote: Remote) -> None:
    """The check is inside the connection itself, not a pre-flight lookup a rebinding DNS
    server could answer differently: a plain httpx client on the guarded transport is refused."""
    before = remote.calls["/json"]
    transport = guarded_transport(AddressPolicy.from_setting(""))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(TargetNotAllowed) as caught:
            await client.get(remote.url("/json", host="localhost"))
    assert caught.value.reason == "loopback"
    assert remote.calls["/json"] == before


class _RecordingBackend(httpcore.AnyIOBackend):
    def __init__(self) -> None:
        self.hosts: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        return await super().connect_tcp(host, port, timeout, local_address, socket_options)


async def test_guard_connects_to_the_checked_address(remote: Remote) -> None:
    inner = _RecordingBackend()
    policy = AddressPolicy.from_setting("localhost")
    checked = await policy.resolve_allowed("localhost", remote.port)
    transport = guarded_transport(policy, inner=inner)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(remote.url("/echo", host="localhost"))
    assert response.json()["headers"]["host"] == f"localhost:{remote.port}"
    assert inner.hosts
    assert all(host in checked for host in inner.hosts)  # IPs, never the name again


def test_httpx_still_has_the_pool_the_guard_replaces() -> None:
    """guarded_transport swaps httpx.AsyncHTTPTransport's private `_pool`; if httpx renames
    it, this fails (and guarded_transport refuses to build a transport)."""
    assert isinstance(httpx.AsyncHTTPTransport()._pool, httpcore.AsyncConnectionPool)
    assert isinstance(guarded_transport(AddressPolicy())._pool, httpcore.AsyncConnectionPool)


async def test_resolve_allowed() -> None:
    assert await AddressPolicy().resolve_allowed("8.8.8.8", 80) == ["8.8.8.8"]
    with pytest.raises(TargetNotAllowed):
        await AddressPolicy().resolve_allowed("localhost", 80)
    allowed = await AddressPolicy.from_setting("localhost").resolve_allowed("localhost", 80)
    assert "127.0.0.1" in allowed
    with pytest.raises(socket.gaierror):
        await AddressPolicy().resolve_allowed("no-such-host.invalid", 80)


# --- arguments and secrecy ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        {"url": "ftp://example.com/file"},
        {"url": "/relative/path"},
        {"url": "http://example.com/", "unknown": 1},
        {"url": "http://example.com/", "method": "TRACE"},
        {"url": "http://example.com/", "timeout_seconds": 0},
        {"url": "http://example.com/", "expect_status": [99]},
        {"url": "http://example.com/", "expect_status": []},
        {"url": "http://example.com/", "headers": {"Bad Name": "x"}},
    ],
)
def test_bad_args_are_validation_errors(args: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        HttpStep.Args.model_validate(args)


def test_method_is_case_insensitive() -> None:
    assert HttpArgs.model_validate({"url": "https://a.test/", "method": "patch"}).method == "PATCH"


async def test_header_values_never_appear_in_errors(remote: Remote) -> None:
    headers = {"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET}
    urls = [
        remote.url("/status?code=404"),
        remote.url("/status?code=503"),
        "http://10.0.0.1/",
        f"http://127.0.0.1:{free_port()}/",
    ]
    errors = [await failure({"url": url, "headers": headers}) for url in urls]
    errors.append(
        await failure(
            {"url": remote.url("/slow?seconds=1"), "headers": headers, "timeout_seconds": 0.2}
        )
    )
    assert {e.code for e in errors} >= {"http_status", "target_not_allowed", "http_timeout"}
    for error in errors:
        assert SECRET not in str(error)
        assert SECRET not in json.dumps(error.as_json())
    with pytest.raises(ValidationError) as caught:
        HttpStep.Args.model_validate(
            {"url": "http://example.com/", "headers": {"X-Api-Key": f"{SECRET}\r\nX: y"}}
        )
    assert SECRET not in str(caught.value)


async def test_steps_reuse_a_connection_per_organization_and_origin_carrying_nothing_over(
    remote: Remote, runtime: Runtime
) -> None:
    """With a worker's runtime the step borrows the organization's pooled client for the URL's
    origin (taskloom/outbound_pool.py): one socket for one organization's calls, another for
    another organization's, and no cookie or header of one call in the next."""
    pooled = dataclasses.replace(runtime, outbound=OutboundPool(max_clients=8))
    org_a, org_b = uuid4(), uuid4()
    before = remote.server.connections

    def ctx(org: UUID) -> StepContext:
        return dataclasses.replace(make_ctx(), org_id=org, runtime=pooled)

    first = await run(
        {"url": remote.url("/json"), "headers": {"Authorization": "Bearer A"}}, ctx(org_a)
    )
    assert first["body"]["hello"] == "world"  # and it set a cookie
    echoed = (await run({"url": remote.url("/echo")}, ctx(org_a)))["body"]["headers"]
    assert "cookie" not in echoed
    assert "authorization" not in echoed
    await run({"url": remote.url("/text")}, ctx(org_a))
    for _ in range(2):
        await run({"url": remote.url("/text")}, ctx(org_b))
    assert remote.server.connections - before == 2
    await pooled.outbound.aclose()
