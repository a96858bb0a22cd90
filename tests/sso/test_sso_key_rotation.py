"""`taskloom keys rotate` re-encrypts single sign-on's secrets too: each provider's client
secret and each SSO session's provider tokens, still bound to their rows."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import insert, text

from taskloom.app import create_app
from taskloom.audit.service import AuditContext
from taskloom.config import Settings
from taskloom.crypto import CredentialCipher, CredentialKeyError
from taskloom.models import metadata
from taskloom.runtime import open_runtime
from taskloom.sso.models import SsoProvider, SsoSession
from taskloom.tools.keys import rotate_keys
from tests.conftest import fresh_deployment
from tests.factories import register
from tests.sso.required_support import session_of

OLD = ("k1", b"1" * 32)
NEW = ("k2", b"2" * 32)
SECRET = {"client_secret": "provider-client-secret"}
TOKENS = {"id_token": "header.claims.signature", "refresh_token": "provider-refresh"}


@pytest.fixture
async def deployment(pg_server_url: str, redis_url: str) -> AsyncIterator[Settings]:
    async with fresh_deployment(pg_server_url, redis_url, label="ssokeys") as settings:
        old = f"{OLD[0]}:{base64.b64encode(OLD[1]).decode()}"
        yield settings.model_copy(update={"credential_encryption_keys": SecretStr(old)})


async def test_rotation_re_encrypts_provider_secrets_and_sso_session_tokens(
    deployment: Settings,
) -> None:
    old = CredentialCipher([OLD])
    runtime = await open_runtime(deployment)
    try:
        app = create_app(runtime=runtime)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                person = await register(client, label="rotate", organization_name="Rotate Org")
        provider = SsoProvider(id=uuid.uuid4())
        session = SsoSession(id=uuid.uuid4(), session_id=session_of(runtime, person))
        identity_id = uuid.uuid4()
        secret_key, sealed_secret = old.encrypt(SECRET, bound_to=provider.secret_bound_to())
        tokens_key, sealed_tokens = old.encrypt(TOKENS, bound_to=session.tokens_bound_to())
        async with runtime.database.system_engine.begin() as conn:
            await conn.execute(
                insert(metadata.tables["sso_providers"]).values(
                    id=provider.id,
                    slug="rotated",
                    display_name="Rotated IdP",
                    issuer="https://idp.example.test",
                    client_id="rotated",
                    secret_key_id=secret_key,
                    secret_encrypted=sealed_secret,
                    scopes=["openid"],
                    algorithms=["RS256"],
                )
            )
            await conn.execute(
                insert(metadata.tables["sso_identities"]).values(
                    id=identity_id,
                    provider_id=provider.id,
                    subject="rotated-subject",
                    user_id=person.user_id,
                    email=person.email,
                )
            )
            await conn.execute(
                insert(metadata.tables["sso_sessions"]).values(
                    id=session.id,
                    session_id=session.session_id,
                    user_id=person.user_id,
                    provider_id=provider.id,
                    identity_id=identity_id,
                    tokens_key_id=tokens_key,
                    tokens_encrypted=sealed_tokens,
                    offline=True,
                )
            )

        both = CredentialCipher([NEW, OLD])
        report = await rotate_keys(runtime.database, both, context=AuditContext())
        assert report.failed == []
        assert report.rotated == 2  # nothing else in this deployment is encrypted
        again = await rotate_keys(runtime.database, both, context=AuditContext())
        assert (again.rotated, again.already_current) == (0, 2)

        async with runtime.database.system_engine.connect() as conn:
            stored_provider = (
                await conn.execute(
                    text("select secret_key_id, secret_encrypted from sso_providers where id = :p"),
                    {"p": provider.id},
                )
            ).one()
            stored_session = (
                await conn.execute(
                    text("select tokens_key_id, tokens_encrypted from sso_sessions where id = :s"),
                    {"s": session.id},
                )
            ).one()
    finally:
        await runtime.close()

    only_new = CredentialCipher([NEW])
    assert stored_provider.secret_key_id == "k2"
    assert stored_session.tokens_key_id == "k2"
    assert (
        only_new.decrypt(
            "k2", stored_provider.secret_encrypted, bound_to=provider.secret_bound_to()
        )
        == SECRET
    )
    assert (
        only_new.decrypt("k2", stored_session.tokens_encrypted, bound_to=session.tokens_bound_to())
        == TOKENS
    )
    with pytest.raises(CredentialKeyError):  # still bound to its row: not another's
        only_new.decrypt("k2", stored_session.tokens_encrypted, bound_to=provider.secret_bound_to())
