"""Stored credentials: AES-256-GCM under named keys, bound to their row."""

from __future__ import annotations

import pytest

from taskloom.crypto import CredentialCipher, CredentialKeyError

OLD, NEW = ("old", b"o" * 32), ("new", b"n" * 32)


def test_a_credential_round_trips_under_the_current_key() -> None:
    cipher = CredentialCipher([NEW, OLD])
    key_id, blob = cipher.encrypt({"token": "secret-value"}, bound_to="row-1")
    assert key_id == "new"
    assert b"secret-value" not in blob
    assert cipher.decrypt(key_id, blob, bound_to="row-1") == {"token": "secret-value"}


def test_the_same_value_encrypts_differently_each_time() -> None:
    cipher = CredentialCipher([NEW])
    first, second = (cipher.encrypt({"t": "x"}, bound_to="r")[1] for _ in range(2))
    assert first != second


def test_a_ciphertext_copied_to_another_row_does_not_decrypt() -> None:
    cipher = CredentialCipher([NEW])
    key_id, blob = cipher.encrypt({"token": "t"}, bound_to="tool_connections:org-a:1")
    with pytest.raises(CredentialKeyError, match="tampered"):
        cipher.decrypt(key_id, blob, bound_to="tool_connections:org-b:1")


def test_old_keys_still_decrypt_after_a_new_key_is_put_first() -> None:
    key_id, blob = CredentialCipher([OLD]).encrypt({"token": "t"}, bound_to="r")
    rotated = CredentialCipher([NEW, OLD])
    assert rotated.decrypt(key_id, blob, bound_to="r") == {"token": "t"}
    assert rotated.needs_rotation(key_id)


def test_a_missing_key_is_named_and_a_wrong_key_fails_clearly() -> None:
    key_id, blob = CredentialCipher([OLD]).encrypt({"token": "t"}, bound_to="r")
    with pytest.raises(CredentialKeyError, match="key 'old', which is not in"):
        CredentialCipher([NEW]).decrypt(key_id, blob, bound_to="r")
    with pytest.raises(CredentialKeyError, match="do not decrypt with key 'old'") as failure:
        CredentialCipher([("old", b"x" * 32)]).decrypt(key_id, blob, bound_to="r")
    assert "o" * 32 not in str(failure.value)


def test_a_tampered_ciphertext_is_refused() -> None:
    cipher = CredentialCipher([NEW])
    key_id, blob = cipher.encrypt({"token": "t"}, bound_to="r")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CredentialKeyError):
        cipher.decrypt(key_id, tampered, bound_to="r")
