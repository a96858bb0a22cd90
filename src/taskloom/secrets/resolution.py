"""The secrets of one running execution, on the worker: values are loaded (only the names a
step's templates read, once per execution), decrypted, held for redaction, and released when
the execution's job ends. Nothing here is written anywhere: values reach a step's render scope
and nothing else, and whatever a step records passes through `redact` first
(executions/state.py, docs/SECRETS.md)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from taskloom.crypto import CredentialCipher, CredentialKeyError
from taskloom.db.engine import Database
from taskloom.db.tenancy import tenant_transaction
from taskloom.observability import secret_values
from taskloom.secrets.models import OrgSecret
from taskloom.secrets.service import unseal


class SecretNotFound(LookupError):
    """A step reads secrets the organization does not have (or that cannot be decrypted)."""

    def __init__(self, names: list[str], reason: str = "no such secret") -> None:
        super().__init__(f"{reason}: {', '.join(names)}")
        self.names = names


@dataclass(frozen=True)
class Resolved:
    value: str
    allowed_hosts: frozenset[str]


@dataclass
class ExecutionSecrets:
    database: Database
    cipher: CredentialCipher
    org_id: uuid.UUID
    resolved: dict[str, Resolved] = field(default_factory=dict)
    _replacements: list[tuple[str, str]] = field(default_factory=list)

    async def values(self, names: Iterable[str]) -> dict[str, str]:
        """name -> value for a step's render scope; SecretNotFound names what is missing."""
        wanted = set(names)
        missing = sorted(wanted - self.resolved.keys())
        if missing:
            await self._load(missing)
        return {name: self.resolved[name].value for name in wanted}

    def allowed_hosts(self, names: Iterable[str]) -> frozenset[str]:
        """Where a request carrying all of `names` may go: the hosts every one of them allows
        (none if any allows none)."""
        sets = [self.resolved[name].allowed_hosts for name in names]
        return frozenset.intersection(*sets) if sets else frozenset()

    async def _load(self, names: list[str]) -> None:
        async with tenant_transaction(self.database, org_id=self.org_id, user_id=None) as db:
            rows = list(
                (
                    await db.execute(
                        select(OrgSecret).where(
                            OrgSecret.org_id == self.org_id, OrgSecret.name.in_(names)
                        )
                    )
                ).scalars()
            )
        found: dict[str, Resolved] = {}
        for row in rows:
            try:
                value = unseal(self.cipher, row)
            except CredentialKeyError:
                raise SecretNotFound([row.name], "secret cannot be decrypted") from None
            found[row.name] = Resolved(value, frozenset(row.allowed_hosts))
        if unknown := sorted(set(names) - found.keys()):
            raise SecretNotFound(unknown)
        secret_values.hold({name: r.value for name, r in found.items()})
        self.resolved.update(found)
        pairs = [
            (form, secret_values.marker(name))
            for name, r in self.resolved.items()
            for form in secret_values.forms(r.value)
        ]
        self._replacements = sorted(pairs, key=lambda pair: -len(pair[0]))

    def redact(self, value: Any) -> Any:
        """A copy of a JSON value with every resolved value, wherever it occurs in a string (or
        a key), replaced by `[secret:NAME]`."""
        if not self._replacements:
            return value
        return _redacted(value, self._replacements)

    def release(self) -> None:
        """The execution's job ends: log and span scrubbing may forget the values (after a
        grace period)."""
        if self.resolved:
            secret_values.release({name: r.value for name, r in self.resolved.items()})


def _redacted(value: Any, pairs: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        return secret_values.replace_all(value, pairs)
    if isinstance(value, dict):
        return {
            secret_values.replace_all(str(k), pairs): _redacted(v, pairs) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redacted(item, pairs) for item in value]
    return value
