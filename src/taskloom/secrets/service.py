"""Organization secrets: create, list, replace, delete. The value is encrypted with AES-256-GCM
under the current credential key, bound to its row (`bound_to`), and never returned, logged,
audited or exported; audit rows name the secret and its allowed hosts, never the value."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.crypto import CredentialCipher
from taskloom.errors import Conflict, NotFound
from taskloom.secrets.models import OrgSecret
from taskloom.secrets.schemas import SecretCreate, SecretOut, SecretReplace


def bound_to(secret_id: uuid.UUID, org_id: uuid.UUID) -> str:
    """The associated data of a secret's ciphertext: it decrypts only in its own row."""
    return f"org_secrets:{org_id}:{secret_id}"


def seal(cipher: CredentialCipher, row: OrgSecret, value: str) -> None:
    row.key_id, row.encrypted_value = cipher.encrypt(
        {"value": value}, bound_to=bound_to(row.id, row.org_id)
    )


def unseal(cipher: CredentialCipher, row: OrgSecret) -> str:
    """The value. Raises CredentialKeyError if it cannot be decrypted."""
    return str(
        cipher.decrypt(row.key_id, row.encrypted_value, bound_to=bound_to(row.id, row.org_id))[
            "value"
        ]
    )


def to_out(row: OrgSecret) -> SecretOut:
    return SecretOut(
        id=row.id,
        name=row.name,
        description=row.description,
        allowed_hosts=list(row.allowed_hosts),
        created_by=row.created_by,
        updated_by=row.updated_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def _audit(
    db: AsyncSession,
    context: AuditContext,
    action: AuditAction,
    row: OrgSecret,
) -> None:
    details: dict[str, Any] = {"name": row.name, "allowed_hosts": list(row.allowed_hosts)}
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=row.org_id,
        resource_type="secret",
        resource_id=row.id,
        details=details,
    )


async def list_secrets(*, db: AsyncSession, principal: Principal) -> list[OrgSecret]:
    rows = await db.execute(
        select(OrgSecret)
        .where(OrgSecret.org_id == principal.current_org())
        .order_by(OrgSecret.name)
    )
    return list(rows.scalars())


async def get_secret(*, db: AsyncSession, principal: Principal, name: str) -> OrgSecret:
    """The secret, or NotFound (also when the name is another organization's)."""
    row = (
        await db.execute(
            select(OrgSecret).where(
                OrgSecret.org_id == principal.current_org(), OrgSecret.name == name
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no secret named {name!r}")
    return row


async def known_names(
    *, db: AsyncSession, org_id: uuid.UUID, names: Iterable[str]
) -> frozenset[str]:
    """Which of `names` are the organization's secrets."""
    wanted = sorted(set(names))
    if not wanted:
        return frozenset()
    found = await db.execute(
        select(OrgSecret.name).where(OrgSecret.org_id == org_id, OrgSecret.name.in_(wanted))
    )
    return frozenset(found.scalars())


async def create_secret(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    cipher: CredentialCipher,
    body: SecretCreate,
) -> OrgSecret:
    row = OrgSecret(
        id=uuid.uuid4(),
        org_id=principal.current_org(),
        name=body.name,
        description=body.description,
        allowed_hosts=body.allowed_hosts,
        created_by=principal.user_id,
        updated_by=principal.user_id,
    )
    seal(cipher, row, body.value)
    db.add(row)
    try:
        async with db.begin_nested():
            await db.flush()
    except IntegrityError:
        raise Conflict(f"a secret named {body.name!r} already exists") from None
    await db.refresh(row)
    await _audit(db, context, AuditAction.SECRET_CREATE, row)
    return row


async def replace_secret(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    cipher: CredentialCipher,
    name: str,
    body: SecretReplace,
) -> OrgSecret:
    row = await get_secret(db=db, principal=principal, name=name)
    seal(cipher, row, body.value)
    row.description = body.description
    row.allowed_hosts = body.allowed_hosts
    row.updated_by = principal.user_id
    await db.flush()
    await db.refresh(row)
    await _audit(db, context, AuditAction.SECRET_REPLACE, row)
    return row


async def delete_secret(
    *, db: AsyncSession, principal: Principal, context: AuditContext, name: str
) -> None:
    row = await get_secret(db=db, principal=principal, name=name)
    await _audit(db, context, AuditAction.SECRET_DELETE, row)
    await db.delete(row)
    await db.flush()
