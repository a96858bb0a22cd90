"""Fake Anthropic and OpenAI HTTP APIs for tests: real servers on 127.0.0.1 (a free port, a
background thread) that speak the APIs' request and response shapes, so the official SDKs run
unmodified against them.

    with FakeAnthropic() as fake:          # or fake.start() / fake.stop()
        fake.reply("hello", input_tokens=12, output_tokens=3)
        fake.fail_next(1, 429)             # then the reply
        ...  # point the SDK at fake.base_url with fake.api_key
        fake.requests[-1].json["model"]

`base_url` is what to give the SDK: Anthropic's SDK appends `/v1/messages` to it, while an
OpenAI base URL conventionally ends in `/v1` (the SDK appends `/chat/completions`).

Each request is recorded (method, path, lower-cased headers, JSON body) and then answered, in
this order: wait `delay_seconds`; a failure queued by `fail_next`; the API's own checks (key,
version header, body); the reply. Error bodies have the real shapes. A 401 quotes the key it was
given, which the real APIs don't do (OpenAI masks it), so tests can prove callers redact it.
Retryable failures carry `retry-after-ms: 1`: both SDKs ignore a `retry-after` of 0 and fall
back to their own backoff (0.5 s and up), so 1 ms is how a test keeps retries fast.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    json: Any  # the decoded body, None when it was not JSON


@dataclass(frozen=True)
class Reply:
    text: str
    input_tokens: int = 10
    output_tokens: int = 5
    stop_reason: str | None = None  # None: the API's usual ("end_turn" / "stop")
    model: str | None = None  # None: the model the request named
    usage_extra: dict[str, int] = field(default_factory=dict)  # e.g. cache_read_input_tokens
    include_usage: bool = True
    content_blocks: list[dict[str, Any]] | None = None  # Anthropic only: instead of one text block


Answer = Callable[[RecordedRequest], str | Reply]


@dataclass(frozen=True)
class _Failure:
    status: int
    error_type: str
    message: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a delayed answer must not hold up stop()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up is part of the tests (timeouts)


class _FakeApi:
    """The server both fakes share; subclasses say how their API checks and answers."""

    _retryable_headers: ClassVar[dict[str, str]] = {"retry-after-ms": "1"}

    def __init__(self, *, api_key: str = "test-key") -> None:
        self.api_key = api_key
        self.delay_seconds = 0.0
        self.requests: list[RecordedRequest] = []
        self.connections = 0  # TCP connections accepted
        self._reply: Callable[[RecordedRequest], Reply] = lambda _request: Reply("ok")
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None

    # ---- scripting ----

    def reply(
        self,
        answer: str | Answer,
        *,
        input_tokens: int = 10,
        output_tokens: int = 5,
        stop_reason: str | None = None,
        model: str | None = None,
        include_usage: bool = True,
        **usage_extra: int,
    ) -> None:
        """Answer every following request with `answer`, or with what `answer(request)` returns
        (a text, which gets the token counts given here, or a whole `Reply`)."""

        def make(request: RecordedRequest) -> Reply:
            result = answer(request) if callable(answer) else answer
            if isinstance(result, Reply):
                return result
            return Reply(
                result,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                stop_reason=stop_reason,
                model=model,
                usage_extra=usage_extra,
                include_usage=include_usage,
            )

        with self._lock:
            self._reply = make

    def fail_next(
        self,
        n: int,
        status: int,
        *,
        error_type: str | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `n` requests with this error status. `headers` replace the default
        `retry-after-ms: 1` of 408/409/429/5xx."""
        retryable = status in (408, 409, 429) or status >= 500
        failure = _Failure(
            status=status,
            error_type=error_type or self._error_type(status),
            message=message or f"fake {status} error",
            headers=headers
            if headers is not None
            else (dict(self._retryable_headers) if retryable else {}),
        )
        with self._lock:
            self._failures.extend([failure] * n)

    # ---- lifecycle ----

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        raise NotImplementedError

    def start(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake.connections += 1

            def do_POST(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), Handler)
        self._server = server
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},  # how long stop() waits for the loop to notice
            name=type(self).__name__,
            daemon=True,
        ).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes requests sleeping in delay_seconds
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- serving ----

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = RecordedRequest(
            method=handler.command,
            path=handler.path,
            headers={name.lower(): value for name, value in handler.headers.items()},
            json=body,
        )
        with self._lock:
            self.requests.append(request)
        if self.delay_seconds and self._stopping.wait(self.delay_seconds):
            return
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
            make_reply = self._reply
        failure = failure or self._check(request)
        if failure is not None:
            status, payload, headers = failure.status, self._error_body(failure), failure.headers
        else:
            status, payload, headers = 200, self._success_body(request, make_reply(request)), {}
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(data)))
            for name, value in {**self._response_headers(), **headers}.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass  # the client gave up (a timeout test)

    def _check(self, request: RecordedRequest) -> _Failure | None:
        raise NotImplementedError

    def _error_type(self, status: int) -> str:
        raise NotImplementedError

    def _error_body(self, failure: _Failure) -> dict[str, Any]:
        raise NotImplementedError

    def _success_body(self, request: RecordedRequest, reply: Reply) -> dict[str, Any]:
        raise NotImplementedError

    def _response_headers(self) -> dict[str, str]:
        return {}

    def _fail(self, status: int, message: str, error_type: str | None = None) -> _Failure:
        return _Failure(status, error_type or self._error_type(status), message, {})


class FakeAnthropic(_FakeApi):
    """POST /v1/messages. Takes the key as `x-api-key` or `Authorization: Bearer` (SDK 2.x sends
    the latter; with both, `x-api-key` counts, as at the real API), requires `anthropic-version`,
    and from version 2026-10-21 on answers 400 to `temperature`, `top_p` and `top_k`."""

    SAMPLING_REMOVED_IN = "2026-10-21"
    _error_types: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        408: "timeout_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        504: "timeout_error",
        529: "overloaded_error",
    }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _error_type(self, status: int) -> str:
        return self._error_types.get(status, "api_error")

    def _check(self, request: RecordedRequest) -> _Failure | None:
        if request.method != "POST" or request.path != "/v1/messages":
            return self._fail(404, f"Not found: {request.method} {request.path}")
        headers = request.headers
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        key = headers.get("x-api-key") or bearer
        if key != self.api_key:
            return self._fail(401, f"invalid x-api-key: {key}")
        version = headers.get("anthropic-version")
        if not version:
            return self._fail(400, "anthropic-version: header is required")
        body = request.json
        if not isinstance(body, dict):
            return self._fail(400, "The request body is not valid JSON.")
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return self._fail(400, f"{name}: Field required")
        if version >= self.SAMPLING_REMOVED_IN:
            for name in ("temperature", "top_p", "top_k"):
                if name in body:
                    return self._fail(400, f"{name}: Extra inputs are not permitted")
        for i, message in enumerate(body["messages"]):
            if message.get("role") not in ("user", "assistant"):
                return self._fail(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        return None

    def _error_body(self, failure: _Failure) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": failure.error_type, "message": failure.message},
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }

    def _success_body(self, request: RecordedRequest, reply: Reply) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": reply.model or request.json["model"],
            "content": reply.content_blocks or [{"type": "text", "text": reply.text}],
            "stop_reason": reply.stop_reason or "end_turn",
            "stop_sequence": None,
        }
        if reply.include_usage:
            body["usage"] = {
                "input_tokens": reply.input_tokens,
                "output_tokens": reply.output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "service_tier": "standard",
                **reply.usage_extra,
            }
        return body

    def _response_headers(self) -> dict[str, str]:
        return {"request-id": f"req_{uuid.uuid4().hex[:24]}"}


class FakeOpenAI(_FakeApi):
    """POST /v1/chat/completions with `Authorization: Bearer <key>`. Like OpenAI, answers 400 to
    JSON mode (`response_format: json_object`) when no message mentions JSON."""

    _error_types: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        403: "invalid_request_error",
        404: "invalid_request_error",
        429: "requests",
    }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _error_type(self, status: int) -> str:
        return self._error_types.get(status, "server_error")

    def _check(self, request: RecordedRequest) -> _Failure | None:
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return self._fail(404, f"Invalid URL ({request.method} {request.path})")
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if key != self.api_key:
            return self._fail(
                401,
                f"Incorrect API key provided: {key}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
            )
        body = request.json
        if not isinstance(body, dict) or "model" not in body:
            return self._fail(400, "you must provide a model parameter")
        if not body.get("messages"):
            return self._fail(400, "[] is too short - 'messages'")
        if (body.get("response_format") or {}).get("type") == "json_object" and not any(
            "json" in str(m.get("content", "")).lower() for m in body["messages"]
        ):
            return self._fail(
                400,
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
            )
        return None

    def _error_body(self, failure: _Failure) -> dict[str, Any]:
        return {
            "error": {
                "message": failure.message,
                "type": failure.error_type,
                "param": None,
                "code": "invalid_api_key" if failure.status == 401 else None,
            }
        }

    def _success_body(self, request: RecordedRequest, reply: Reply) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or request.json["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": reply.text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": reply.stop_reason or "stop",
                }
            ],
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        if reply.include_usage:
            body["usage"] = {
                "prompt_tokens": reply.input_tokens,
                "completion_tokens": reply.output_tokens,
                "total_tokens": reply.input_tokens + reply.output_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
                **reply.usage_extra,
            }
        return body

    def _response_headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_{uuid.uuid4().hex[:24]}", "openai-processing-ms": "1"}
