"""Encryption of stored credentials: AES-256-GCM with a random 96-bit nonce, under a named key
from CREDENTIAL_ENCRYPTION_KEYS. The ciphertext is bound to where it is stored (the associated
data names the table row), so a value copied into another organization's row does not decrypt.

Stored form: the key id in its own column, and `b"\\x01" + nonce (12) + ciphertext + tag (16)`.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taskloom.config import Settings

_VERSION = b"\x01"
_NONCE_BYTES = 12


class CredentialKeyError(RuntimeError):
    """Stored credentials cannot be decrypted: their key is not configured, or the key or the
    ciphertext is wrong. The message names the key id, never key material."""


class CredentialCipher:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("at least one credential key is needed")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}
        self.current_key_id = keys[0][0]

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialCipher:
        return cls(settings.credential_keys())

    def encrypt(self, value: dict[str, Any], *, bound_to: str) -> tuple[str, bytes]:
        """(key id, ciphertext) of a JSON-able value under the current key."""
        nonce = os.urandom(_NONCE_BYTES)
        plaintext = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
        sealed = self._keys[self.current_key_id].encrypt(nonce, plaintext, bound_to.encode())
        return self.current_key_id, _VERSION + nonce + sealed

    def decrypt(self, key_id: str, blob: bytes, *, bound_to: str) -> dict[str, Any]:
        aead = self._keys.get(key_id)
        if aead is None:
            raise CredentialKeyError(
                f"credentials were encrypted with key {key_id!r}, which is not in "
                "CREDENTIAL_ENCRYPTION_KEYS (add it back, or re-enter the credentials)"
            )
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
            raise CredentialKeyError("stored credentials are not in a known format")
        nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            plaintext = aead.decrypt(nonce, sealed, bound_to.encode())
        except InvalidTag:
            raise CredentialKeyError(
                f"stored credentials do not decrypt with key {key_id!r}: the key was changed "
                "or the value was tampered with"
            ) from None
        value = json.loads(plaintext)
        if not isinstance(value, dict):
            raise CredentialKeyError("stored credentials are not a JSON object")
        return value

    def needs_rotation(self, key_id: str) -> bool:
        return key_id != self.current_key_id


# --- signing secrets with a rotation overlap (outgoing webhooks, webhook triggers) ---------------
# A row holding one: `secret_key_id`, `encrypted_secret`, `encrypted_previous_secret` and
# `previous_secret_expires_at`, both secrets under the key named by `secret_key_id`.


def seal_secret(cipher: CredentialCipher, row: Any, secret: str, *, bound_to: str) -> None:
    """Store `secret` as the row's current secret (under the current key)."""
    row.secret_key_id, row.encrypted_secret = cipher.encrypt({"secret": secret}, bound_to=bound_to)


def live_secrets(cipher: CredentialCipher, row: Any, *, bound_to: str) -> list[str]:
    """The row's secrets valid now: the current one, then the previous one while its overlap
    lasts ([] when it has none)."""
    if row.encrypted_secret is None:
        return []
    key_id = row.secret_key_id or ""
    found = [cipher.decrypt(key_id, row.encrypted_secret, bound_to=bound_to)["secret"]]
    expires = row.previous_secret_expires_at
    if row.encrypted_previous_secret and expires and expires > datetime.now(UTC):
        previous = cipher.decrypt(key_id, row.encrypted_previous_secret, bound_to=bound_to)
        found.append(previous["secret"])
    return [str(s) for s in found]


def rotate_sealed_secret(
    cipher: CredentialCipher, row: Any, secret: str, *, bound_to: str, overlap_seconds: int
) -> None:
    """`secret` becomes current; the current one stays valid for `overlap_seconds`."""
    current = live_secrets(cipher, row, bound_to=bound_to)[0]
    seal_secret(cipher, row, secret, bound_to=bound_to)
    row.encrypted_previous_secret = cipher.encrypt({"secret": current}, bound_to=bound_to)[1]
    row.previous_secret_expires_at = datetime.now(UTC) + timedelta(seconds=overlap_seconds)
