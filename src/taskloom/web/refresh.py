"""Rotating a UI session's refresh token once when several requests present it at once.

Browsers send requests in parallel (two tabs, a page reloading itself while another loads), each
with the same refresh token; presenting it a second time counts as reuse and revokes the session
(ADR 0003). So the first request rotates it and the others, within a short grace period, get the
same new pair:

- within one process, from memory (a lock serialises the rotations);
- across API processes, through Redis: the first process takes a short lock keyed by the
  token's SHA-256 and leaves the new pair there for the grace period, sealed with AES-GCM under a
  key derived from the old refresh token itself — only a request that presents that token can
  open it, and whoever reads Redis finds no usable token. The others wait for it.

Redis unavailable: each process rotates on its own, as before (a parallel refresh on another
process then revokes the session and the person signs in again).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
import uuid
from dataclasses import asdict

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.exceptions import RedisError

from taskloom.audit.service import AuditContext
from taskloom.auth import service as auth
from taskloom.auth.tokens import sha256_hex
from taskloom.runtime import Runtime
from taskloom.sso import sessions as sso_sessions

log = structlog.get_logger("taskloom.web")

GRACE_SECONDS = 30.0
LOCK_SECONDS = 10  # longer than a rotation (one database transaction) can take
WAIT_SECONDS = 5.0  # how long another process waits for the first one's result
POLL_SECONDS = 0.05


def _key(old_refresh_token: str) -> AESGCM:
    return AESGCM(
        HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"taskloom ui refresh handoff v1",
        ).derive(old_refresh_token.encode())
    )


def seal(old_refresh_token: str, pair: auth.TokenPair) -> str:
    nonce = os.urandom(12)
    plain = json.dumps(asdict(pair), default=str).encode()
    return base64.b64encode(nonce + _key(old_refresh_token).encrypt(nonce, plain, None)).decode()


def unseal(old_refresh_token: str, sealed: bytes | str) -> auth.TokenPair | None:
    try:
        raw = base64.b64decode(sealed)
        plain = _key(old_refresh_token).decrypt(raw[:12], raw[12:], None)
    except (InvalidTag, ValueError):
        return None
    data = json.loads(plain)
    return auth.TokenPair(
        access_token=data["access_token"],
        expires_in=int(data["expires_in"]),
        refresh_token=data["refresh_token"],
        refresh_expires_in=int(data["refresh_expires_in"]),
        user_id=uuid.UUID(data["user_id"]),
        org_id=uuid.UUID(data["org_id"]) if data["org_id"] else None,
    )


class RefreshCoalescer:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._recent: dict[str, tuple[float, auth.TokenPair]] = {}

    async def rotate(
        self, runtime: Runtime, refresh_token: str, client: AuditContext
    ) -> auth.TokenPair:
        digest = sha256_hex(refresh_token)
        async with self._lock:
            now = time.monotonic()
            self._recent = {k: v for k, v in self._recent.items() if now - v[0] < GRACE_SECONDS}
            if digest in self._recent:
                return self._recent[digest][1]
            pair = await self._rotate_once(runtime, refresh_token, digest, client)
            self._recent[digest] = (now, pair)
            return pair

    async def _rotate_once(
        self, runtime: Runtime, refresh_token: str, digest: str, client: AuditContext
    ) -> auth.TokenPair:
        redis, result_key = runtime.redis, runtime.keys("ui-refresh", digest)
        try:
            first = await redis.set(f"{result_key}:lock", "1", nx=True, ex=LOCK_SECONDS)
            if not first:
                handed = await self._wait_for(runtime, result_key, refresh_token)
                if handed is not None:
                    return handed
        except RedisError as error:
            log.warning("ui_refresh_handoff_unavailable", error=type(error).__name__)
            return await sso_sessions.refresh(runtime, refresh_token, client)
        try:
            pair = await sso_sessions.refresh(runtime, refresh_token, client)
        except Exception:
            with contextlib.suppress(RedisError):  # the others stop waiting and try themselves
                await redis.delete(f"{result_key}:lock")
            raise
        try:
            await redis.set(result_key, seal(refresh_token, pair), ex=int(GRACE_SECONDS))
        except RedisError as error:
            log.warning("ui_refresh_handoff_unavailable", error=type(error).__name__)
        return pair

    @staticmethod
    async def _wait_for(
        runtime: Runtime, result_key: str, refresh_token: str
    ) -> auth.TokenPair | None:
        """The pair another process is producing; None if it will not come (that rotation
        failed, or its process died), and this one then tries itself."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            sealed = await runtime.redis.get(result_key)
            if sealed is not None:
                return unseal(refresh_token, sealed)
            if not await runtime.redis.exists(f"{result_key}:lock"):
                return None
            await asyncio.sleep(POLL_SECONDS)
        return None
