"""Seeding what single sign-on leaves in the database (providers, group mappings, identities,
SSO sessions) directly with the system engine, for the tests of SSO-required organizations:
they are about what a password or an SSO session may do, not about how the flow made it."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import insert, text

from taskloom.auth.tokens import decode_access_token
from taskloom.models import metadata
from taskloom.runtime import Runtime
from tests.factories import Account


@dataclass
class SsoSeed:
    runtime: Runtime
    providers: list[uuid.UUID] = field(default_factory=list)

    async def provider(self, *, enabled: bool = True) -> uuid.UUID:
        provider_id = uuid.uuid4()
        key_id, sealed = self.runtime.cipher.encrypt(
            {"client_secret": "seeded-secret"},
            bound_to=f"sso_providers:{provider_id}:client_secret",
        )
        async with self.runtime.database.system_engine.begin() as conn:
            await conn.execute(
                insert(metadata.tables["sso_providers"]).values(
                    id=provider_id,
                    slug=f"req-{secrets.token_hex(6)}",
                    display_name="Seeded IdP",
                    issuer="https://idp.example.test",
                    client_id="seeded",
                    secret_key_id=key_id,
                    secret_encrypted=sealed,
                    scopes=["openid", "email", "groups"],
                    groups_claim="groups",
                    algorithms=["RS256"],
                    enabled=enabled,
                )
            )
        self.providers.append(provider_id)
        return provider_id

    async def mapping(
        self, provider_id: uuid.UUID, org_id: uuid.UUID | None, role: str = "member"
    ) -> None:
        async with self.runtime.database.system_engine.begin() as conn:
            await conn.execute(
                insert(metadata.tables["sso_group_mappings"]).values(
                    provider_id=provider_id, group_name="engineers", org_id=org_id, role=role
                )
            )

    async def mapped_provider(self, org_id: uuid.UUID | None) -> uuid.UUID:
        """An enabled provider with a group mapping into the organization."""
        provider_id = await self.provider()
        await self.mapping(provider_id, org_id)
        return provider_id

    async def sso_session(self, account: Account, provider_id: uuid.UUID) -> uuid.UUID:
        """Make the account's current session one that single sign-on started through the
        provider (an identity and an sso_sessions row, as the callback leaves them)."""
        session_id = session_of(self.runtime, account)
        identity_id = uuid.uuid4()
        async with self.runtime.database.system_engine.begin() as conn:
            await conn.execute(
                insert(metadata.tables["sso_identities"]).values(
                    id=identity_id,
                    provider_id=provider_id,
                    subject=f"sub-{secrets.token_hex(6)}",
                    user_id=account.user_id,
                    email=account.email,
                )
            )
            await conn.execute(
                insert(metadata.tables["sso_sessions"]).values(
                    session_id=session_id,
                    user_id=account.user_id,
                    provider_id=provider_id,
                    identity_id=identity_id,
                    tokens_key_id="unused",
                    tokens_encrypted=b"unused",
                )
            )
        return session_id

    async def cleanup(self) -> None:
        # Mappings, identities and SSO sessions go with their provider (ON DELETE CASCADE).
        async with self.runtime.database.system_engine.begin() as conn:
            await conn.execute(
                text("delete from sso_providers where id = any(:p)"), {"p": self.providers}
            )


def session_of(runtime: Runtime, account: Account) -> uuid.UUID:
    return decode_access_token(settings=runtime.settings, token=account.access_token).session_id


async def require_sso(
    client: httpx.AsyncClient,
    owner: Account,
    sso: SsoSeed,
    *,
    break_glass: uuid.UUID | None = None,
) -> uuid.UUID:
    """Map a provider into the owner's organization and require single sign-on there; returns
    the provider's id."""
    provider_id = await sso.mapped_provider(owner.org_id)
    response = await client.patch(
        "/api/org",
        json={
            "sso_required": True,
            "sso_break_glass_user_id": str(break_glass) if break_glass else None,
        },
        headers=owner.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["sso_required"] is True
    return provider_id


async def audit_rows(
    runtime: Runtime, org_id: uuid.UUID | None, *actions: str
) -> list[dict[str, Any]]:
    """The organization's audit rows of these actions, oldest first."""
    async with runtime.database.system_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "select action, actor_user_id, resource_id, success, details from audit_logs "
                "where org_id = :o and action = any(:a) order by seq"
            ),
            {"o": org_id, "a": list(actions)},
        )
        return [dict(row._mapping) for row in rows]


async def session_row(runtime: Runtime, session_id: uuid.UUID) -> dict[str, Any]:
    async with runtime.database.system_engine.connect() as conn:
        row = (
            await conn.execute(
                text("select org_id, revoked_at, revoked_reason from sessions where id = :s"),
                {"s": session_id},
            )
        ).one()
        return dict(row._mapping)


async def session_count(runtime: Runtime, user_id: uuid.UUID) -> int:
    async with runtime.database.system_engine.connect() as conn:
        found = await conn.scalar(
            text("select count(*) from sessions where user_id = :u"), {"u": user_id}
        )
        return int(found or 0)
