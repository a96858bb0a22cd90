"""Audit rows chain over a salted digest of their personal-capable content (ADR 0004), so a
person can be erased from the trail without breaking its hash chain. Existing chains are
re-sealed once under the new rule (the old rule hashed personal fields directly).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import secrets
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
# Audit chains re-sealed under a new rule (the previous release would break them) and a NOT NULL
# digest it does not write.
breaks_previous = True

GENESIS = "0" * 64


def _canonical(content: dict[str, Any]) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _ip(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(str(value).split("/")[0]))
    except ValueError:
        return None


def upgrade() -> None:
    op.add_column("audit_logs", sa.Column("content_salt", sa.String(32), nullable=True))
    op.add_column("audit_logs", sa.Column("content_digest", sa.String(64), nullable=True))
    op.add_column("audit_logs", sa.Column("redacted_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("audit_logs", sa.Column("actor_pseudonym", sa.String(64), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "select id, org_id, seq, created_at, actor_user_id, actor_api_key_id, action, "
            "resource_type, resource_id, ip, user_agent, request_id, success, details "
            "from audit_logs order by org_id nulls first, seq"
        )
    ).mappings()
    previous: dict[Any, str] = {}
    for row in rows:
        salt = secrets.token_hex(16)
        content = {
            "actor_user_id": str(row["actor_user_id"]) if row["actor_user_id"] else None,
            "actor_api_key_id": str(row["actor_api_key_id"]) if row["actor_api_key_id"] else None,
            "resource_type": row["resource_type"],
            "resource_id": row["resource_id"],
            "ip": _ip(row["ip"]),
            "user_agent": row["user_agent"],
            "request_id": row["request_id"],
            "details": row["details"],
        }
        digest = hashlib.sha256(salt.encode() + b"|" + _canonical(content)).hexdigest()
        prev = previous.get(row["org_id"], GENESIS)
        chain = {
            "id": str(row["id"]),
            "org_id": str(row["org_id"]) if row["org_id"] else None,
            "seq": row["seq"],
            "created_at": row["created_at"].astimezone(UTC).isoformat(),
            "action": row["action"],
            "success": row["success"],
            "content_digest": digest,
            "prev_hash": prev,
        }
        row_hash = hashlib.sha256(_canonical(chain)).hexdigest()
        connection.execute(
            sa.text(
                "update audit_logs set content_salt = :salt, content_digest = :digest, "
                "prev_hash = :prev, hash = :hash where id = :id"
            ),
            {"salt": salt, "digest": digest, "prev": prev, "hash": row_hash, "id": row["id"]},
        )
        previous[row["org_id"]] = row_hash
        connection.execute(
            sa.text(
                "update audit_chain_heads set last_hash = :hash "
                "where chain = :chain and last_seq = :seq"
            ),
            {
                "hash": row_hash,
                "chain": str(row["org_id"]) if row["org_id"] else "instance",
                "seq": row["seq"],
            },
        )
    op.alter_column("audit_logs", "content_digest", nullable=False)


def downgrade() -> None:
    # The old rule cannot be restored for erased rows; chains re-sealed by upgrade() would need
    # re-sealing again under the old rule, which this downgrade does not attempt.
    op.drop_column("audit_logs", "actor_pseudonym")
    op.drop_column("audit_logs", "redacted_at")
    op.drop_column("audit_logs", "content_digest")
    op.drop_column("audit_logs", "content_salt")
