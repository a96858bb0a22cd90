"""Verifying inbound webhook requests, for webhook triggers: pure functions, no I/O.

`verify(scheme, secrets, headers, body)` checks one request the way its sender signs it and
answers `Verified(delivery_id)` or `Rejected(reason)`; whatever the request holds, it never
raises. `secrets` is the trigger's current secret, then the previous one while a rotation's
overlap lasts: a request signed with any of them passes. The schemes, as their senders define
them:

- taskloom: Taskloom's own outgoing webhooks (taskloom/webhooks/signing.py), so one instance can
  start another's workflows: `Taskloom-Signature: t=<unix>,v1=<hex>[,v1=...]`, delivery id
  `Taskloom-Delivery` (the event id, the same on every retry).
- stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=...][,v0=...]`, only v1 checked: HMAC-SHA256
  keyed with the whole `whsec_...` secret over `<t>.` + body, as stripe-python's
  `WebhookSignature` computes it; delivery id: the body's event id (`evt_...`).
- github: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`; delivery id
  `X-GitHub-Delivery`. (The SHA-1 `X-Hub-Signature` is not accepted.)
- slack: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<ts>:" + body>` with the timestamp in
  `X-Slack-Request-Timestamp`; delivery id: the Events API's `event_id`, when the body has one.
- standard (Standard Webhooks 1.0): `webhook-signature` lists `v1,<base64 HMAC-SHA256>` entries,
  space-separated, over `<webhook-id>.<webhook-timestamp>.` + body, keyed with the base64 that
  follows `whsec_`; delivery id `webhook-id`.
- token: no signature, the secret itself in `Authorization: Bearer <secret>` or
  `X-Taskloom-Token: <secret>`; delivery id `Idempotency-Key`, when sent.

Timestamped schemes accept TOLERANCE_SECONDS of clock difference either way. Reasons:
signature_missing, signature_mismatch, timestamp_missing, timestamp_stale, malformed_header (a
header that cannot be parsed, is not ASCII, or is longer than MAX_HEADER_LENGTH; also a delivery id
header that is no usable id), id_missing (standard's webhook-id) and no_secret. A reason never
holds a secret or an expected signature. Every signature or token is compared in constant time,
with every secret and every presented signature (no early exit). A request to an unknown or
disabled trigger should cost what a failed verification costs: `dummy_verify`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from secrets import token_bytes, token_hex

from taskloom.webhooks import signing


class Scheme(StrEnum):
    TASKLOOM = "taskloom"
    STRIPE = "stripe"
    GITHUB = "github"
    SLACK = "slack"
    STANDARD = "standard"
    TOKEN = "token"  # noqa: S105 (a scheme name, not a secret)


TOLERANCE_SECONDS = 300
MAX_HEADER_LENGTH = 8 * 1024  # longer header values are refused unread
MAX_DELIVERY_ID_LENGTH = 255  # the providers' ids are far shorter; longer ones are not stored
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
# Unix seconds as an integer in canonical form: no sign, spaces, underscores, leading zeros or
# non-ASCII digits (all of which int() would take), so the text signed is str(int(text)).
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,14}")


@dataclass(frozen=True)
class Verified:
    delivery_id: str | None  # the provider's delivery id, to de-duplicate on; None when it has none


@dataclass(frozen=True)
class Rejected:
    reason: str


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_secret() -> str:
    """`whsec_` and standard base64 (padded) of 32 random bytes: usable with every scheme,
    Standard Webhooks included (its libraries base64-decode what follows the prefix)."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(32)).decode()


def verify(
    scheme: Scheme,
    secrets: list[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> Verified | Rejected:
    """Check the request against `secrets` (current first, then the previous one during a
    rotation). Header names are looked up case-insensitively in any Mapping."""
    check = _SCHEMES[Scheme(scheme)]
    if not secrets:
        return Rejected("no_secret")
    request = _Request(headers, body, time.time() if now is None else now)
    try:
        return Verified(check(request, secrets))
    except _Refused as refused:
        return Rejected(refused.reason)


def dummy_verify(body: bytes) -> None:
    """The work of a failed verification (one HMAC-SHA256 over the body, with a random key, and
    a constant-time comparison), so that a request to an unknown or disabled trigger takes as
    long as one with a bad signature."""
    expected = _hmac_hex(token_bytes(32), b"", body)
    hmac.compare_digest(expected.encode(), token_hex(32).encode())


class _Request:
    """The body and the headers, their names lowercased once (the first of repeated ones kept)."""

    def __init__(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        self._headers: dict[str, object] = {}
        for name, value in headers.items():
            if isinstance(name, str):
                self._headers.setdefault(name.lower(), value)
        self.body = body
        self.now = now

    def header(self, name: str) -> str | None:
        """The value, or None when absent or empty; refused when not ASCII or too long."""
        value = self._headers.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str) or len(value) > MAX_HEADER_LENGTH or not value.isascii():
            raise _Refused("malformed_header")
        return value

    def delivery_id(self, name: str) -> str | None:
        value = self.header(name)
        if value is not None and not _usable_id(value):
            raise _Refused("malformed_header")
        return value


def _usable_id(value: str) -> bool:
    """Short printable ASCII: storable and loggable as it is (no NUL, no lone surrogate)."""
    return 0 < len(value) <= MAX_DELIVERY_ID_LENGTH and value.isascii() and value.isprintable()


def _timestamp(text: str | None) -> int:
    if text is None:
        raise _Refused("timestamp_missing")
    if not _TIMESTAMP.fullmatch(text):
        raise _Refused("malformed_header")
    return int(text)


def _t_and_v1(header: str | None) -> tuple[str | None, list[str]]:
    """Stripe's layout, which Taskloom's copies: `t=<unix>` and every `v1=<signature>`; other
    keys (Stripe's v0) are ignored, as stripe-python ignores them."""
    if header is None:
        raise _Refused("signature_missing")
    timestamp: str | None = None
    signatures: list[str] = []
    for element in header.split(","):
        key, equals, value = element.strip().partition("=")
        if not equals:
            raise _Refused("malformed_header")
        if key == "t":
            if timestamp is not None:
                raise _Refused("malformed_header")  # two timestamps: which one was signed?
            timestamp = value
        elif key == "v1":
            signatures.append(value)
    if not signatures:
        raise _Refused("signature_missing")
    return timestamp, signatures


def _prefixed(header: str | None, prefix: str) -> str:
    """The signature after `prefix` (`sha256=`, `v0=`) in a one-signature header."""
    if header is None:
        raise _Refused("signature_missing")
    if not header.startswith(prefix):
        raise _Refused("malformed_header")
    return header.removeprefix(prefix)


def _hmac_hex(key: bytes, prefix: bytes, body: bytes) -> str:
    mac = hmac.new(key, prefix, hashlib.sha256)
    mac.update(body)  # not prefix + body: no copy of a large body per secret
    return mac.hexdigest()


def _require_match(expected: Iterable[str], presented: list[str]) -> None:
    """Pass when any presented value equals any expected one. Every pair is compared in constant
    time, without stopping at a match, so the time taken says nothing of which one matched."""
    matched = False
    for candidate in expected:
        for value in presented:
            matched |= hmac.compare_digest(candidate.encode(), value.encode())
    if not matched:
        raise _Refused("signature_mismatch")


def _require_fresh(timestamp: int, now: float) -> None:
    # Checked after the signature, as Stripe's libraries do: "timestamp_stale" then means a
    # genuinely signed request that is old (a replay, or a clock far off), not a forgery.
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        raise _Refused("timestamp_stale")


def _json_string(body: bytes, name: str) -> str | None:
    """The body's top-level string `name` when the body is a JSON object and it is a usable id.
    Only signed bodies get here, but nothing is assumed of them: not JSON, an array, nesting
    deeper than the parser's recursion limit or a 5,000-digit number all give None."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = document.get(name) if isinstance(document, dict) else None
    return value if isinstance(value, str) and _usable_id(value) else None


def _taskloom(request: _Request, secrets: list[str]) -> str | None:
    text, signatures = _t_and_v1(request.header("taskloom-signature"))
    timestamp = _timestamp(text)
    delivery_id = request.delivery_id("taskloom-delivery")
    _require_match((signing.signature(s, timestamp, request.body) for s in secrets), signatures)
    _require_fresh(timestamp, request.now)
    return delivery_id


def _stripe(request: _Request, secrets: list[str]) -> str | None:
    text, signatures = _t_and_v1(request.header("stripe-signature"))
    timestamp = _timestamp(text)
    signed = f"{timestamp}.".encode()
    _require_match((_hmac_hex(s.encode(), signed, request.body) for s in secrets), signatures)
    _require_fresh(timestamp, request.now)
    return _json_string(request.body, "id")


def _github(request: _Request, secrets: list[str]) -> str | None:
    # GitHub signs the body alone, with no timestamp: a captured delivery stays valid for as
    # long as the secret does. Replay protection comes from de-duplicating on the delivery id.
    signature = _prefixed(request.header("x-hub-signature-256"), "sha256=")
    delivery_id = request.delivery_id("x-github-delivery")
    _require_match((_hmac_hex(s.encode(), b"", request.body) for s in secrets), [signature])
    return delivery_id


def _slack(request: _Request, secrets: list[str]) -> str | None:
    signature = _prefixed(request.header("x-slack-signature"), "v0=")
    timestamp = _timestamp(request.header("x-slack-request-timestamp"))
    signed = f"v0:{timestamp}:".encode()
    _require_match((_hmac_hex(s.encode(), signed, request.body) for s in secrets), [signature])
    _require_fresh(timestamp, request.now)
    return _json_string(request.body, "event_id")


def _standard(request: _Request, secrets: list[str]) -> str | None:
    signatures = _standard_signatures(request.header("webhook-signature"))
    timestamp = _timestamp(request.header("webhook-timestamp"))
    message_id = request.delivery_id("webhook-id")
    if message_id is None:
        raise _Refused("id_missing")
    signed = f"{message_id}.{timestamp}.".encode()
    keys = [key for key in map(_standard_key, secrets) if key]
    expected = (base64.b64encode(_hmac_digest(key, signed, request.body)).decode() for key in keys)
    _require_match(expected, signatures)
    _require_fresh(timestamp, request.now)
    return message_id


def _standard_signatures(header: str | None) -> list[str]:
    """The base64 of every `v1,` entry; other versions (`v1a`, asymmetric) are not ours."""
    if header is None:
        raise _Refused("signature_missing")
    signatures = []
    for entry in header.split(" "):
        if not entry:
            continue
        version, comma, signature = entry.partition(",")
        if not comma:
            raise _Refused("malformed_header")
        if version == "v1":
            signatures.append(signature)
    if not signatures:
        raise _Refused("signature_missing")
    return signatures


def _standard_key(secret: str) -> bytes | None:
    """The HMAC key of a Standard Webhooks secret, decoded as the reference library decodes it
    (prefix dropped, padding added, characters outside the alphabet skipped); None if it is
    not base64 at all."""
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX) + "==")
    except (binascii.Error, ValueError):
        return None


def _hmac_digest(key: bytes, prefix: bytes, body: bytes) -> bytes:
    mac = hmac.new(key, prefix, hashlib.sha256)
    mac.update(body)
    return mac.digest()


def _token(request: _Request, secrets: list[str]) -> str | None:
    # No signature over the body and no timestamp: whoever holds the token may send anything, as
    # often as they like. Replay protection comes from de-duplicating on Idempotency-Key.
    presented = []
    authorization = request.header("authorization")
    if authorization is not None:
        kind, _, credentials = authorization.partition(" ")
        if kind.lower() == "bearer" and credentials.strip(" "):
            presented.append(credentials.strip(" "))
    if (token := request.header("x-taskloom-token")) is not None:
        presented.append(token)
    delivery_id = request.delivery_id("idempotency-key")
    if not presented:
        # An Authorization header of another kind (Basic, an empty Bearer) is not a token.
        raise _Refused("signature_missing" if authorization is None else "malformed_header")
    _require_match(secrets, presented)
    return delivery_id


_SCHEMES: dict[Scheme, Callable[[_Request, list[str]], str | None]] = {
    Scheme.TASKLOOM: _taskloom,
    Scheme.STRIPE: _stripe,
    Scheme.GITHUB: _github,
    Scheme.SLACK: _slack,
    Scheme.STANDARD: _standard,
    Scheme.TOKEN: _token,
}
