"""Refuse input PostgreSQL cannot store, before any route sees it: a NUL character (text and
jsonb reject U+0000), an unpaired UTF-16 surrogate (not valid UTF-8), and NaN / Infinity or
numbers too large for a double (not valid JSON for jsonb). Checked once, here, for the query
string, JSON bodies and form bodies alike, so no route and no future field can forget it; the
answer is a 422 naming where the bad value is (a 500 before this existed).

Bodies arrive here already capped by BodySizeLimitMiddleware; they are buffered, checked and
replayed to the app unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskloom.errors import error_response


class BadInput(ValueError):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (U+0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (not valid Unicode)"
    return None


def _reject_constant(name: str) -> Any:
    raise BadInput("body", f"{name} is not a JSON number Taskloom can store")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadInput("body", f"the number {text[:40]} is too large to store")
    return value


def _walk(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """(location, text) of every string in a decoded JSON value, keys included."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}.{key}", key
            yield from _walk(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}.{index}")


def check_json(body: bytes) -> None:
    """Raise BadInput for a storable-JSON problem; leave malformed JSON to FastAPI (400)."""
    try:
        decoded = json.loads(body, parse_constant=_reject_constant, parse_float=_finite)
    except BadInput:
        raise
    except (ValueError, RecursionError):
        return  # not JSON at all: the route's own parsing answers 400 malformed_json
    for where, text in _walk(decoded, "body"):
        if problem := _text_problem(text):
            raise BadInput(where, problem)


def check_pairs(pairs: list[tuple[str, str]], where: str) -> None:
    for name, value in pairs:
        for text in (name, value):
            if problem := _text_problem(text):
                raise BadInput(f"{where}.{name.replace(chr(0), '?')}", problem)


def _media_type(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media: str = value.decode("latin-1").split(";")[0].strip().lower()
            return media
    return ""


class InputGuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            query = scope.get("query_string", b"").decode("utf-8", errors="surrogateescape")
            check_pairs(parse_qsl(query, keep_blank_values=True), "query")
            if _text_problem(scope.get("path", "")):
                raise BadInput("path", "contains a NUL character or invalid Unicode")
        except BadInput as bad:
            await error_response(422, "invalid_characters", str(bad))(scope, receive, send)
            return
        media = _media_type(scope)
        checks_body = (
            media == "application/json"
            or media.endswith("+json")
            or (media == "application/x-www-form-urlencoded")
        )
        if not checks_body or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = bytearray()
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
        except HTTPException as too_large:  # BodySizeLimitMiddleware stopped the upload
            detail = str(too_large.detail)
            await error_response(too_large.status_code, "payload_too_large", detail)(
                scope, receive, send
            )
            return
        try:
            if media == "application/x-www-form-urlencoded":
                text = bytes(body).decode("utf-8", errors="surrogateescape")
                check_pairs(parse_qsl(text, keep_blank_values=True), "form")
            else:
                check_json(bytes(body))
        except BadInput as bad:
            code = "invalid_number" if "number" in bad.problem else "invalid_characters"
            await error_response(422, code, str(bad))(scope, receive, send)
            return

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)
