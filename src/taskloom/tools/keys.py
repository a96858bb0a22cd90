"""`taskloom keys rotate`: re-encrypt every stored secret (connections' credentials,
organization secrets, webhook and webhook trigger secrets, single sign-on providers' client
secrets and SSO sessions' provider tokens) under the current key, the first of
CREDENTIAL_ENCRYPTION_KEYS. Old keys keep decrypting until then, so rotation is: put the new
key first, keep the old one, deploy, run this, remove the old key, deploy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import func, select

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.crypto import CredentialCipher, CredentialKeyError
from taskloom.db.engine import Database
from taskloom.db.tenancy import system_transaction
from taskloom.secrets.models import OrgSecret
from taskloom.secrets.service import bound_to as secret_bound_to
from taskloom.sso.models import SsoProvider, SsoSession
from taskloom.tools.models import ToolConnection
from taskloom.tools.service import bound_to
from taskloom.triggers.models import WorkflowTrigger
from taskloom.triggers.service import bound_to as trigger_bound_to
from taskloom.webhooks.models import WebhookEndpoint
from taskloom.webhooks.service import bound_to as webhook_bound_to

log = structlog.get_logger("taskloom.tools")

BATCH = 200


@dataclass
class RotationReport:
    current_key_id: str
    rotated: int = 0
    already_current: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (row id, reason)


@dataclass(frozen=True)
class _Sealed:
    """A table holding ciphertexts: its model, the key-id column, the ciphertext columns, and
    the associated data a row's ciphertexts are bound to."""

    model: Any
    key_column: str
    blob_columns: tuple[str, ...]
    bound: Callable[[Any], str]


SEALED = (
    _Sealed(
        ToolConnection,
        "key_id",
        ("encrypted_credentials",),
        lambda row: bound_to(row.id, row.org_id),
    ),
    _Sealed(
        OrgSecret,
        "key_id",
        ("encrypted_value",),
        lambda row: secret_bound_to(row.id, row.org_id),
    ),
    _Sealed(
        WebhookEndpoint,
        "secret_key_id",
        ("encrypted_secret", "encrypted_previous_secret"),
        lambda row: webhook_bound_to(row.id, row.org_id),
    ),
    _Sealed(
        WorkflowTrigger,
        "secret_key_id",
        ("encrypted_secret", "encrypted_previous_secret"),
        lambda row: trigger_bound_to(row.id, row.org_id),
    ),
    _Sealed(SsoProvider, "secret_key_id", ("secret_encrypted",), SsoProvider.secret_bound_to),
    _Sealed(SsoSession, "tokens_key_id", ("tokens_encrypted",), SsoSession.tokens_bound_to),
)


async def rotate_keys(
    database: Database, cipher: CredentialCipher, *, context: AuditContext
) -> RotationReport:
    """Re-encrypt, in batches, every stored secret (connections' credentials, organization
    secrets, webhook and trigger secrets, SSO client secrets and session tokens) not under the
    current key. Runs across organizations on the privileged engine. Rows that do not decrypt
    are reported, not changed."""
    report = RotationReport(current_key_id=cipher.current_key_id)
    for table in SEALED:
        await _rotate_table(database, cipher, table, report)
    async with system_transaction(database) as db:
        current = 0
        for table in SEALED:
            key = getattr(table.model, table.key_column)
            current += int(
                await db.scalar(
                    select(func.count())
                    .select_from(table.model)
                    .where(key == cipher.current_key_id)
                )
                or 0
            )
        report.already_current = current - report.rotated
        await audit.record(
            session=db,
            context=context,
            action=AuditAction.CONNECTION_KEYS_ROTATE,
            org_id=None,
            resource_type="credential_key",
            resource_id=cipher.current_key_id,
            success=not report.failed,
            details={"rotated": report.rotated, "failed": len(report.failed)},
        )
    log.info("credential_keys_rotated", rotated=report.rotated, failed=len(report.failed))
    return report


async def _rotate_table(
    database: Database, cipher: CredentialCipher, table: _Sealed, report: RotationReport
) -> None:
    key = getattr(table.model, table.key_column)
    failed_ids: set[str] = set()
    while True:
        async with system_transaction(database) as db:
            rows = (
                await db.execute(
                    select(table.model)
                    .where(key.is_not(None), key != cipher.current_key_id)
                    .order_by(table.model.id)
                    .limit(BATCH + len(failed_ids))
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
            batch = [row for row in rows if str(row.id) not in failed_ids][:BATCH]
            for row in batch:
                try:
                    _reseal(cipher, table, row)
                except CredentialKeyError as error:
                    failed_ids.add(str(row.id))
                    report.failed.append((str(row.id), str(error)))
                    continue
                report.rotated += 1
        if not batch:
            return


def _reseal(cipher: CredentialCipher, table: _Sealed, row: Any) -> None:
    """Decrypt every ciphertext of the row, then (only if all worked) encrypt them anew."""
    where, key_id = table.bound(row), getattr(row, table.key_column)
    plain = {
        column: cipher.decrypt(key_id, blob, bound_to=where)
        for column in table.blob_columns
        if (blob := getattr(row, column)) is not None
    }
    for column, value in plain.items():
        new_key_id, blob = cipher.encrypt(value, bound_to=where)
        setattr(row, column, blob)
        setattr(row, table.key_column, new_key_id)
