"""Signatures of outgoing webhooks.

Header: `Taskloom-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where the HMAC key is the
endpoint's whole secret (`whsec_…`, as UTF-8) and the message is `<t>.` followed by the raw
request body. While a rotated-out secret is still valid, a second `v1=` signature made with it
follows the first. A receiver recomputes the HMAC over the body bytes it received, compares it
in constant time with any `v1` value, and rejects timestamps more than 5 minutes from its clock
(docs/WEBHOOKS.md shows it in Python and Node).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
TOLERANCE_SECONDS = 300


def new_secret() -> str:
    return SECRET_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secrets_: list[str], timestamp: int, body: bytes) -> str:
    """The header value, signed with every given secret (current first)."""
    parts = [f"t={timestamp}", *(f"v1={signature(s, timestamp, body)}" for s in secrets_)]
    return ",".join(parts)
