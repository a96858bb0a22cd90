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

Tool calling and streaming, as the APIs document them: a `Reply` with `tool_calls` answers
with Anthropic `tool_use` blocks (stop reason `tool_use`) or OpenAI `tool_calls` (finish reason
`tool_calls`, several at once for parallel calls); a request with `"stream": true` gets the
answer as Server-Sent Events (Anthropic: message_start, content_block_start/delta/stop with
text_delta and input_json_delta, message_delta, message_stop; OpenAI: chat.completion.chunk
objects with content and tool-call deltas by index, a last chunk with the usage when
`stream_options.include_usage`, then `[DONE]`). Both fakes check a conversation as the APIs do:
every tool call of an assistant turn needs its result right after it, and tool names must match
^[a-zA-Z0-9_-]{1,64}$. `script(reply, reply, ...)` answers the next requests in that order.

Each request is recorded (method, path, lower-cased headers, JSON body) and then answered, in
this order: wait `delay_seconds`; a failure queued by `fail_next`; the API's own checks (key,
version header, body); the reply. Error bodies have the real shapes. A 401 quotes the key it was
given, which the real APIs don't do (OpenAI masks it), so tests can prove callers redact it.
Retryable failures carry `retry-after-ms: 1`: both SDKs ignore a `retry-after` of 0 and fall
back to their own backoff (0.5 s and up), so 1 ms is how a test keeps retries fast.
"""

from __future__ import annotations

import json
import re
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
    # Tools the model calls: (name, arguments), or (call id, name, arguments).
    tool_calls: list[tuple[Any, ...]] = field(default_factory=list)

    def calls(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The tool calls with their ids (made up where the script gave none)."""
        return [
            c if len(c) == 3 else (f"call_{uuid.uuid4().hex[:16]}", c[0], c[1])
            for c in self.tool_calls
        ]


_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


_Event = tuple[str | None, Any]  # (SSE event name or None, data)


def _sse(events: list[_Event]) -> bytes:
    lines = []
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data)
        lines.append((f"event: {name}\n" if name else "") + f"data: {payload}\n\n")
    return "".join(lines).encode()


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
        self._script: list[Reply | int] = []
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

    def script(self, *replies: str | Reply | int) -> None:
        """Answer the next requests with these replies, in order (then as `reply` says); an
        int is an error status to answer with at that point (no `retry-after-ms`)."""
        with self._lock:
            self._script.extend(r if isinstance(r, Reply | int) else Reply(r) for r in replies)

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
            scripted = self._script.pop(0) if failure is None and self._script else None
            if isinstance(scripted, int):
                failure = self._fail(scripted, f"fake {scripted} error")
                scripted = None
        content_type = "application/json"
        if failure is not None:
            status, payload, headers = failure.status, self._error_body(failure), failure.headers
            data = json.dumps(payload).encode()
        else:
            status, headers = 200, {}
            reply = scripted or make_reply(request)
            if (request.json or {}).get("stream"):
                content_type = "text/event-stream"
                data = _sse(self._stream_events(request, reply))
            else:
                data = json.dumps(self._success_body(request, reply)).encode()
        try:
            handler.send_response(status)
            handler.send_header("content-type", content_type)
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

    def _stream_events(
        self, request: RecordedRequest, reply: Reply
    ) -> list[tuple[str | None, Any]]:
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
        for i, tool in enumerate(body.get("tools") or []):
            if not _TOOL_NAME.match(str(tool.get("name", ""))):
                return self._fail(400, f"tools.{i}.name: String should match pattern")
            if not isinstance(tool.get("input_schema"), dict):
                return self._fail(400, f"tools.{i}.input_schema: Field required")
        return self._check_tool_results(body["messages"])

    def _check_tool_results(self, messages: list[dict[str, Any]]) -> _Failure | None:
        """Each tool_use of an assistant message needs a tool_result in the next message."""
        for i, message in enumerate(messages):
            content = message.get("content")
            if message.get("role") != "assistant" or not isinstance(content, list):
                continue
            ids = {b["id"] for b in content if b.get("type") == "tool_use"}
            if not ids:
                continue
            following = messages[i + 1]["content"] if i + 1 < len(messages) else []
            answered = {
                b.get("tool_use_id")
                for b in (following if isinstance(following, list) else [])
                if b.get("type") == "tool_result"
            }
            if missing := ids - answered:
                return self._fail(
                    400,
                    f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(sorted(missing))}. Each `tool_use` block "
                    "must have a corresponding `tool_result` block in the next message.",
                )
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
            "content": reply.content_blocks or self._blocks(reply),
            "stop_reason": reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn"),
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

    def _blocks(self, reply: Reply) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if reply.text or not reply.tool_calls:
            blocks.append({"type": "text", "text": reply.text})
        blocks.extend(
            {"type": "tool_use", "id": call_id, "name": name, "input": args}
            for call_id, name, args in reply.calls()
        )
        return blocks

    def _stream_events(
        self, request: RecordedRequest, reply: Reply
    ) -> list[tuple[str | None, Any]]:
        whole = self._success_body(request, reply)
        usage = whole.get("usage") or {"input_tokens": 0, "output_tokens": 0}
        start = {
            **whole,
            "content": [],
            "stop_reason": None,
            "usage": {**usage, "output_tokens": 1},
        }
        events: list[_Event] = [
            ("message_start", {"type": "message_start", "message": start}),
            ("ping", {"type": "ping"}),
        ]
        for index, block in enumerate(whole["content"]):
            if block["type"] == "text":
                first, deltas = (
                    {"type": "text", "text": ""},
                    [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])],
                )
            else:
                first = {**block, "input": {}}
                deltas = [
                    {"type": "input_json_delta", "partial_json": piece}
                    for piece in _pieces(json.dumps(block["input"]), 7)
                ]
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": first},
                )
            )
            events.extend(
                ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                for d in deltas
            )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events

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
        for i, tool in enumerate(body.get("tools") or []):
            function = tool.get("function") or {}
            if tool.get("type") != "function" or not _TOOL_NAME.match(str(function.get("name"))):
                return self._fail(
                    400, f"Invalid 'tools[{i}].function.name': string does not match pattern."
                )
        return self._check_tool_messages(body["messages"])

    def _check_tool_messages(self, messages: list[dict[str, Any]]) -> _Failure | None:
        """An assistant message with tool_calls must be followed by a `tool` message for each
        call id; a `tool` message must answer one of them."""
        pending: set[str] = set()
        for i, message in enumerate(messages):
            if message.get("role") == "tool":
                if message.get("tool_call_id") not in pending:
                    return self._fail(
                        400,
                        f"Invalid parameter: messages with role 'tool' must be a response to a "
                        f"preceeding message with 'tool_calls' (messages[{i}]).",
                    )
                pending.discard(message["tool_call_id"])
                continue
            if pending:
                return self._fail(
                    400,
                    "An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                    f"response messages: {', '.join(sorted(pending))}",
                )
            if message.get("role") == "assistant":
                pending = {c["id"] for c in message.get("tool_calls") or []}
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
                        "content": reply.text if reply.text or not reply.tool_calls else None,
                        "refusal": None,
                        "annotations": [],
                        **({"tool_calls": self._tool_calls(reply)} if reply.tool_calls else {}),
                    },
                    "logprobs": None,
                    "finish_reason": reply.stop_reason
                    or ("tool_calls" if reply.tool_calls else "stop"),
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

    def _tool_calls(self, reply: Reply) -> list[dict[str, Any]]:
        return [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for call_id, name, args in reply.calls()
        ]

    def _stream_events(
        self, request: RecordedRequest, reply: Reply
    ) -> list[tuple[str | None, Any]]:
        whole = self._success_body(request, reply)
        message, finish = whole["choices"][0]["message"], whole["choices"][0]["finish_reason"]
        head = {k: whole[k] for k in ("id", "created", "model", "system_fingerprint")}
        head["object"] = "chat.completion.chunk"
        with_usage = bool((request.json.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> Any:
            body = {
                **head,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if with_usage:
                body["usage"] = None
            return (None, body)

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events.extend(chunk({"content": piece}) for piece in _pieces(message["content"] or ""))
        for index, call in enumerate(message.get("tool_calls") or []):
            first = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            events.append(chunk({"tool_calls": [first]}))
            events.extend(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                for piece in _pieces(call["function"]["arguments"], 7)
            )
        events.append(chunk({}, finish))
        if with_usage and "usage" in whole:
            events.append((None, {**head, "choices": [], "usage": whole["usage"]}))
        events.append((None, "[DONE]"))
        return events

    def _response_headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_{uuid.uuid4().hex[:24]}", "openai-processing-ms": "1"}
