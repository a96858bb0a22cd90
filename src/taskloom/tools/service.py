"""Tool and AI connections: create, list, change, delete, test. Credentials are validated by the
provider's `Credentials` model, encrypted with AES-256-GCM (bound to the row's id) and never
returned, logged, audited or exported; audit rows name the fields that changed, not values."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.config import Settings
from taskloom.crypto import CredentialCipher, CredentialKeyError
from taskloom.errors import Conflict, NotFound, ValidationFailed
from taskloom.net import TargetNotAllowed
from taskloom.tools.base import Connection, Tool, ToolError
from taskloom.tools.client import provider_client
from taskloom.tools.models import ToolConnection
from taskloom.tools.registry import PROVIDERS
from taskloom.tools.schemas import ConnectionCreate, ConnectionOut, ConnectionUpdate

# Providers without a default base URL: the connection names its own.
_NEEDS_BASE_URL = frozenset({"mcp", "http"})


def bound_to(connection_id: uuid.UUID, org_id: uuid.UUID) -> str:
    """The associated data of a connection's ciphertext: it decrypts only in its own row."""
    return f"tool_connections:{org_id}:{connection_id}"


def _plain(value: Any) -> Any:
    """A validated model's data as JSON, secrets revealed (only ever to be encrypted)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {k: _plain(v) for k, v in value if v is not None}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _validated(model: type[BaseModel], data: dict[str, Any], field: str) -> dict[str, Any]:
    try:
        parsed = model.model_validate(data)
    except ValidationError as invalid:
        errors = [
            {
                "loc": ["body", field, *(str(p) for p in e.get("loc", ()))],
                "message": e.get("msg", "invalid"),
            }
            for e in invalid.errors(include_input=False)
        ]
        first = errors[0]
        raise ValidationFailed(
            f"{'.'.join(first['loc'])}: {first['message']}", details={"errors": errors}
        ) from None
    result: dict[str, Any] = _plain(parsed)
    return result


def to_out(row: ToolConnection, cipher: CredentialCipher) -> ConnectionOut:
    fields: list[str] = []
    if row.encrypted_credentials is not None and row.key_id is not None:
        try:
            fields = sorted(
                cipher.decrypt(
                    row.key_id, row.encrypted_credentials, bound_to=bound_to(row.id, row.org_id)
                )
            )
        except CredentialKeyError:
            fields = ["<undecryptable: re-enter the credentials>"]
    return ConnectionOut(
        id=row.id,
        provider=row.provider,
        name=row.name,
        base_url=row.base_url,
        effective_base_url=row.base_url or PROVIDERS[row.provider].default_base_url,
        config=row.config,
        enabled=row.enabled,
        credential_fields=fields,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def decrypted(row: ToolConnection, cipher: CredentialCipher) -> Connection:
    """The connection as a provider needs it. Raises CredentialKeyError if it cannot decrypt."""
    credentials: dict[str, Any] = {}
    if row.encrypted_credentials is not None and row.key_id is not None:
        credentials = cipher.decrypt(
            row.key_id, row.encrypted_credentials, bound_to=bound_to(row.id, row.org_id)
        )
    return Connection(
        id=row.id,
        org_id=row.org_id,
        provider=row.provider,
        base_url=(row.base_url or PROVIDERS[row.provider].default_base_url).rstrip("/"),
        credentials=credentials,
        config=dict(row.config),
    )


async def _audit(
    db: AsyncSession,
    context: AuditContext,
    action: AuditAction,
    row: ToolConnection,
    details: dict[str, Any] | None = None,
) -> None:
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=row.org_id,
        resource_type="connection",
        resource_id=row.id,
        details={"provider": row.provider, "name": row.name, **(details or {})},
    )


async def list_connections(*, db: AsyncSession, principal: Principal) -> list[ToolConnection]:
    rows = await db.execute(
        select(ToolConnection)
        .where(ToolConnection.org_id == principal.current_org())
        .order_by(ToolConnection.name)
    )
    return list(rows.scalars())


async def get_connection(*, db: AsyncSession, connection_id: uuid.UUID) -> ToolConnection:
    """The connection, or NotFound (also when it belongs to another organization)."""
    row = await db.get(ToolConnection, connection_id)
    if row is None:
        raise NotFound("connection not found")
    return row


async def find_connection(
    *, db: AsyncSession, org_id: uuid.UUID, ref: str, provider: str | None = None
) -> ToolConnection | None:
    """A connection of the organization by id or by name (what workflow steps refer to)."""
    query = select(ToolConnection).where(ToolConnection.org_id == org_id)
    try:
        query = query.where(ToolConnection.id == uuid.UUID(ref))
    except ValueError:
        query = query.where(ToolConnection.name == ref)
    if provider is not None:
        query = query.where(ToolConnection.provider == provider)
    return (await db.execute(query)).scalar_one_or_none()


async def _flush_unique(db: AsyncSession, name: str) -> None:
    try:
        async with db.begin_nested():
            await db.flush()
    except IntegrityError:
        raise Conflict(f"a connection named {name!r} already exists") from None


async def create_connection(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    cipher: CredentialCipher,
    body: ConnectionCreate,
) -> ToolConnection:
    provider = PROVIDERS[body.provider]
    credentials = _validated(provider.Credentials, body.credentials, "credentials")
    config = _validated(provider.Config, body.config, "config")
    if body.provider in _NEEDS_BASE_URL and body.base_url is None:
        raise ValidationFailed(
            f"body.base_url: an {body.provider} connection needs its URL",
            details={
                "errors": [
                    {"loc": ["body", "base_url"], "message": f"required for {body.provider}"}
                ]
            },
        )
    row = ToolConnection(
        id=uuid.uuid4(),
        org_id=principal.current_org(),
        provider=body.provider,
        name=body.name,
        base_url=body.base_url,
        config=config,
        enabled=body.enabled,
        created_by=principal.user_id,
    )
    row.key_id, row.encrypted_credentials = cipher.encrypt(
        credentials, bound_to=bound_to(row.id, row.org_id)
    )
    db.add(row)
    await _flush_unique(db, body.name)
    await db.refresh(row)
    await _audit(db, context, AuditAction.CONNECTION_CREATE, row)
    return row


async def update_connection(
    *,
    db: AsyncSession,
    context: AuditContext,
    cipher: CredentialCipher,
    connection_id: uuid.UUID,
    body: ConnectionUpdate,
) -> ToolConnection:
    """Change what the body names. Moving a connection to another base URL needs its
    credentials again: otherwise an admin could send the stored ones to a server of their choice
    (and read them there)."""
    row = await get_connection(db=db, connection_id=connection_id)
    provider = PROVIDERS[row.provider]
    changed = sorted(body.model_fields_set)
    if (
        "base_url" in body.model_fields_set
        and _destination(row.provider, body.base_url) != _destination(row.provider, row.base_url)
        and body.credentials is None
        and _holds_credentials(row, cipher)
    ):
        raise ValidationFailed(
            "body.credentials: changing base_url needs the credentials again "
            "(the stored ones are never sent to a new destination)",
            code="credentials_required_for_new_base_url",
            details={"errors": [{"loc": ["body", "credentials"], "message": "required"}]},
        )
    if "name" in body.model_fields_set and body.name is not None:
        row.name = body.name
    if "base_url" in body.model_fields_set:
        if body.base_url is None and row.provider in _NEEDS_BASE_URL:
            raise ValidationFailed(f"body.base_url: an {row.provider} connection needs its URL")
        row.base_url = body.base_url
    if body.config is not None:
        row.config = _validated(provider.Config, body.config, "config")
    if body.enabled is not None:
        row.enabled = body.enabled
    if body.credentials is not None:
        credentials = _validated(provider.Credentials, body.credentials, "credentials")
        row.key_id, row.encrypted_credentials = cipher.encrypt(
            credentials, bound_to=bound_to(row.id, row.org_id)
        )
    await _flush_unique(db, row.name)
    await db.refresh(row)
    await _audit(db, context, AuditAction.CONNECTION_UPDATE, row, {"fields": changed})
    return row


def _destination(provider: str, base_url: str | None) -> str:
    """Where a connection's requests go: its base URL, else the provider's default."""
    return (base_url or PROVIDERS[provider].default_base_url).strip().rstrip("/")


def _holds_credentials(row: ToolConnection, cipher: CredentialCipher) -> bool:
    """Whether the row stores any credential (one that cannot be decrypted counts)."""
    if row.encrypted_credentials is None or row.key_id is None:
        return False
    try:
        return bool(
            cipher.decrypt(
                row.key_id, row.encrypted_credentials, bound_to=bound_to(row.id, row.org_id)
            )
        )
    except CredentialKeyError:
        return True


async def delete_connection(
    *, db: AsyncSession, context: AuditContext, connection_id: uuid.UUID
) -> ToolConnection:
    row = await get_connection(db=db, connection_id=connection_id)
    await _audit(db, context, AuditAction.CONNECTION_DELETE, row)
    await db.delete(row)
    await db.flush()
    return row


async def list_tools(
    *, settings: Settings, cipher: CredentialCipher, row: ToolConnection
) -> list[Tool]:
    """The connection's tools (an MCP server is asked; built-in providers know theirs)."""
    connection = _usable(row, cipher)
    provider = PROVIDERS[row.provider]
    timeout = settings.tool_timeout_seconds
    try:
        async with asyncio.timeout(timeout), provider_client(settings, connection) as http:
            return await provider.tools(connection, http)
    except TimeoutError:
        raise Conflict(_too_slow(row, timeout), code="tool_timeout") from None
    except ToolError as error:
        raise Conflict(error.message, code=error.code) from None
    except TargetNotAllowed as refused:
        raise Conflict(str(refused), code="target_not_allowed") from None


async def check_connection(
    *,
    db: AsyncSession,
    context: AuditContext,
    settings: Settings,
    cipher: CredentialCipher,
    connection_id: uuid.UUID,
) -> dict[str, Any]:
    """Make one cheap authenticated call, within TOOL_TIMEOUT_SECONDS all told; the outcome is
    the answer (a failing remote is not an error of this request). Circuit breakers and metrics
    are left alone."""
    row = await get_connection(db=db, connection_id=connection_id)
    timeout = settings.tool_timeout_seconds
    started = time.perf_counter()
    result: dict[str, Any]
    try:
        connection = _usable(row, cipher, allow_disabled=True)
        async with asyncio.timeout(timeout), provider_client(settings, connection) as http:
            details = await PROVIDERS[row.provider].check(connection, http)
        result = {"ok": True, "details": details}
    except TimeoutError:
        message = _too_slow(row, timeout)
        result = {"ok": False, "error": {"code": "tool_timeout", "message": message}}
    except ToolError as error:
        result = {"ok": False, "error": {"code": error.code, "message": error.message}}
    except TargetNotAllowed as refused:
        result = {"ok": False, "error": {"code": "target_not_allowed", "message": str(refused)}}
    except Conflict as error:
        result = {"ok": False, "error": {"code": error.code, "message": error.message}}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000)
    await _audit(db, context, AuditAction.CONNECTION_TEST, row, {"ok": result["ok"]})
    return result


def _too_slow(row: ToolConnection, timeout: float) -> str:
    return f"{row.provider} did not answer within {timeout:g} s"


def _usable(
    row: ToolConnection, cipher: CredentialCipher, *, allow_disabled: bool = False
) -> Connection:
    if not row.enabled and not allow_disabled:
        raise Conflict(f"connection {row.name!r} is disabled", code="connection_disabled")
    try:
        return decrypted(row, cipher)
    except CredentialKeyError as error:
        raise Conflict(str(error), code="credentials_undecryptable") from None
