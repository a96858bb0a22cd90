"""Refuse input PostgreSQL cannot store, before any route sees it: a NUL character (text and
jsonb reject U+0000), an unpaired UTF-16 surrogate (not valid UTF-8), and NaN / Infinity or
numbers too large for a double (not valid JSON for jsonb). Checked once, here, for the query
string and every body the app parses — JSON (with or without a Content-Type), urlencoded and
multipart forms — so no route and no future field can forget it; the answer is a 422 naming
where the bad value is (a 500 before this existed). The UI also parses some form fields as JSON
(a workflow's definition): `check_decoded` checks those values once parsed (web/forms.py).

Bodies arrive here already capped by BodySizeLimitMiddleware; they are buffered, checked and
replayed to the app unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
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


NUMBER_PROBLEM = "is not a number Taskloom can store (NaN, Infinity, or too large for a double)"


def _printable(name: str) -> str:
    return name.replace("\x00", "?").encode("utf-8", "replace").decode()


def check_decoded(value: Any, where: str) -> None:
    """Raise BadInput at the first string (keys included) or number of a decoded JSON value that
    cannot be stored, named by its path (e.g. `body.definition.steps.0.args`). Iterative: a
    deeply nested document must not exhaust the stack here."""
    pending: list[tuple[str, Any]] = [(where, value)]
    while pending:
        at, item = pending.pop()
        if isinstance(item, str):
            if problem := _text_problem(item):
                raise BadInput(at, problem)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BadInput(at, NUMBER_PROBLEM)
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                if problem := _text_problem(key):
                    raise BadInput(f"{at}.{_printable(key)}", problem)
                children.append((f"{at}.{key}", child))
            pending.extend(reversed(children))  # depth first, in document order
        elif isinstance(item, list):
            pending.extend(reversed([(f"{at}.{i}", child) for i, child in enumerate(item)]))


def check_json(body: bytes) -> None:
    """Raise BadInput for a storable-JSON problem; leave malformed JSON to FastAPI (400)."""
    try:
        decoded = json.loads(body)  # NaN, Infinity and 1e400 decode to floats checked below
    except (ValueError, RecursionError):
        return  # not JSON at all: the route's own parsing answers 400 malformed_json
    check_decoded(decoded, "body")


def check_pairs(pairs: list[tuple[str, str]], where: str) -> None:
    for name, value in pairs:
        for text in (name, value):
            if problem := _text_problem(text):
                raise BadInput(f"{where}.{name.replace(chr(0), '?')}", problem)


def _media_type(scope: Scope) -> str | None:
    """The body's media type, lower case; None without a Content-Type header."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media: str = value.decode("latin-1").split(";")[0].strip().lower()
            return media
    return None


def _body_kind(media: str | None) -> str | None:
    """How the app would parse a body of this media type: "json", "form", "multipart", or None
    (not parsed, e.g. a GDPR archive upload has none). A body without a Content-Type is checked
    as JSON, as FastAPI parses it when a route relaxes strict_content_type; one that is not JSON
    passes unchecked."""
    if media is None or media == "application/json" or media.endswith("+json"):
        return "json"
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media == "multipart/form-data":
        return "multipart"
    return None


async def _multipart_pairs(scope: Scope, body: bytes) -> list[tuple[str, str]]:
    """(name, value) of every part, a file's name standing for its value (its bytes are not
    text). A body that does not parse is left to the app, which answers it."""

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(Headers(scope=scope), chunks())  # type: ignore[arg-type]
    try:
        form = await parser.parse()
    except MultiPartException:
        return []
    try:
        return [
            (name, value.filename or "" if isinstance(value, UploadFile) else value)
            for name, value in form.multi_items()
        ]
    finally:
        await form.close()


async def _check_body(scope: Scope, kind: str, body: bytes) -> None:
    if kind == "form":
        text = body.decode("utf-8", errors="surrogateescape")
        check_pairs(parse_qsl(text, keep_blank_values=True), "form")
    elif kind == "multipart":
        check_pairs(await _multipart_pairs(scope, body), "form")
    else:
        check_json(body)


class InputGuardMiddleware:
    """`raw_body_paths`: path prefixes whose routes read and check their bodies themselves
    (webhook triggers: the signature covers the raw bytes, and a request refused before it is
    verified must not have cost a parse); their query string and path are still checked."""

    def __init__(self, app: ASGIApp, *, raw_body_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.raw_body_paths = raw_body_paths

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
        kind = _body_kind(_media_type(scope))
        if (
            kind is None
            or scope.get("method") in ("GET", "HEAD", "OPTIONS")
            or scope.get("path", "").startswith(self.raw_body_paths)
        ):
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
            await _check_body(scope, kind, bytes(body))
        except BadInput as bad:
            code = "invalid_number" if bad.problem == NUMBER_PROBLEM else "invalid_characters"
            await error_response(422, code, str(bad))(scope, receive, send)
            return

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)
