"""`taskloom keys rotate`: re-encrypt every stored credential under the current key (the first
of CREDENTIAL_ENCRYPTION_KEYS). Old keys keep decrypting until then, so rotation is: put the new
key first, keep the old one, deploy, run this, remove the old key, deploy."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from sqlalchemy import select

import taskloom.db.registry  # noqa: F401  (every model mapped: foreign keys resolve)
from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.crypto import CredentialCipher, CredentialKeyError
from taskloom.db.engine import Database
from taskloom.db.tenancy import system_transaction
from taskloom.tools.models import ToolConnection
from taskloom.tools.service import bound_to

log = structlog.get_logger("taskloom.tools")

BATCH = 200


@dataclass
class RotationReport:
    current_key_id: str
    rotated: int = 0
    already_current: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (connection id, reason)


async def rotate_keys(
    database: Database, cipher: CredentialCipher, *, context: AuditContext
) -> RotationReport:
    """Re-encrypt, in batches, every connection not under the current key. Runs across
    organizations on the privileged engine. Rows that do not decrypt are reported, not changed."""
    report = RotationReport(current_key_id=cipher.current_key_id)
    failed_ids: set[str] = set()
    while True:
        async with system_transaction(database) as db:
            rows = (
                await db.execute(
                    select(ToolConnection)
                    .where(
                        ToolConnection.encrypted_credentials.is_not(None),
                        ToolConnection.key_id != cipher.current_key_id,
                    )
                    .order_by(ToolConnection.id)
                    .limit(BATCH + len(failed_ids))
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
            batch = [row for row in rows if str(row.id) not in failed_ids][:BATCH]
            for row in batch:
                assert row.key_id is not None
                assert row.encrypted_credentials is not None
                where = bound_to(row.id, row.org_id)
                try:
                    value = cipher.decrypt(row.key_id, row.encrypted_credentials, bound_to=where)
                except CredentialKeyError as error:
                    failed_ids.add(str(row.id))
                    report.failed.append((str(row.id), str(error)))
                    continue
                row.key_id, row.encrypted_credentials = cipher.encrypt(value, bound_to=where)
                report.rotated += 1
        if not batch:
            break
    async with system_transaction(database) as db:
        report.already_current = (
            len(
                (
                    await db.execute(
                        select(ToolConnection.id).where(
                            ToolConnection.key_id == cipher.current_key_id
                        )
                    )
                ).all()
            )
            - report.rotated
        )
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
