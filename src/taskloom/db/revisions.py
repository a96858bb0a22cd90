"""Whether this build can run on the database's schema, during a rolling upgrade too.

Every migration declares `breaks_previous`: whether the release before it can still run on the
schema it leaves. Additive changes (a new table, a nullable column, an index) say False; a
change the previous release's code would trip over (a NOT NULL column it does not write, a
renamed or dropped column, data rewritten under a new rule) says True. The declaration is copied
into `schema_revisions` in the migration's own transaction, because a process of the previous
release does not have the newer migration's file: the database is where it learns whether it
may keep serving (docs/OPERATIONS.md, "Rolling upgrades").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Boolean, String, delete, inspect, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from taskloom.db.base import Base, created_at
from taskloom.db.migrate import alembic_config, current_revision
from taskloom.db.rls import AppAccess


class SchemaRevision(
    Base,
    shared="applied migrations and their breaks_previous; the app role only reads it",
    app_access=AppAccess.READ_ONLY,
):
    """One applied migration and its declaration (bookkeeping beside alembic_version)."""

    __tablename__ = "schema_revisions"

    revision: Mapped[str] = mapped_column(String(32), primary_key=True)
    breaks_previous: Mapped[bool] = mapped_column(Boolean, nullable=False)
    applied_at: Mapped[datetime] = created_at()


class UndeclaredMigration(Exception):
    """A migration file without `breaks_previous = True|False`."""


def breaks_previous(script: Script) -> bool:
    """The migration's declaration; raises UndeclaredMigration when it makes none."""
    declared = getattr(script.module, "breaks_previous", None)
    if not isinstance(declared, bool):
        raise UndeclaredMigration(
            f"migration {script.revision} ({script.path}) must declare "
            "`breaks_previous = True` or `= False`: can the previous release run on its schema?"
        )
    return declared


def record_applied(script: ScriptDirectory, connection: Connection, step: MigrationInfo) -> None:
    """Alembic's on_version_apply hook, inside the migration's transaction: an upgrade records
    the revision and its ancestors (those applied before this table existed); a downgrade
    forgets the revision it removes."""
    if step.is_upgrade:
        scripts = [script.get_revision(r) for r in step.up_revision_ids]
        for applied in scripts:
            assert applied is not None
            breaks_previous(applied)  # an undeclared migration fails in its own transaction
    if not inspect(connection).has_table(SchemaRevision.__tablename__):
        return  # before the migration that creates it, or after the one that drops it
    if not step.is_upgrade:
        removed = SchemaRevision.revision.in_(step.up_revision_ids)
        connection.execute(delete(SchemaRevision).where(removed))
        return
    rows = [
        {"revision": s.revision, "breaks_previous": breaks_previous(s)}
        for head in step.up_revision_ids
        for s in script.iterate_revisions(head, "base")
    ]
    connection.execute(insert(SchemaRevision).values(rows).on_conflict_do_nothing())


def on_version_apply(script: ScriptDirectory) -> Any:
    """The callback env.py hands to `context.configure(on_version_apply=...)`."""

    def callback(*, ctx: MigrationContext, step: MigrationInfo, **_: Any) -> None:
        assert ctx.connection is not None
        record_applied(script, ctx.connection, step)

    return callback


# --- readiness -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaState:
    """What the database's schema means for this build."""

    runnable: bool
    status: str  # current | ahead | ahead_breaking | behind | empty | unknown
    revision: str | None
    reason: str | None = None


@lru_cache(maxsize=1)
def lineage() -> tuple[str, ...]:
    """This build's revisions, head first."""
    directory = ScriptDirectory.from_config(alembic_config("postgresql://unused"))
    head = directory.get_current_head()
    assert head is not None
    return tuple(s.revision for s in directory.iterate_revisions(head, "base"))


def classify(
    *, revision: str | None, applied: dict[str, bool] | None, known: tuple[str, ...]
) -> SchemaState:
    """`known` is this build's lineage, head first; `applied` the database's schema_revisions
    (None when it has no such table)."""
    head = known[0]
    if revision is None:
        return SchemaState(False, "empty", None, "the database has no schema: run taskloom migrate")
    if revision == head:
        return SchemaState(True, "current", revision)
    if revision in known:
        reason = f"the database is at {revision}, behind this build's {head}: run taskloom migrate"
        return SchemaState(False, "behind", revision, reason)
    if applied is None or head not in applied:
        reason = (
            f"the database is at {revision}, a revision this build does not know, "
            f"and its recorded history does not include this build's {head}"
        )
        return SchemaState(False, "unknown", revision, reason)
    breaking = sorted(r for r, breaks in applied.items() if breaks and r not in known)
    if breaking:
        reason = (
            f"the database is at {revision}: migration {', '.join(breaking)} breaks the "
            f"release this build ({head}) belongs to; roll out the newer release"
        )
        return SchemaState(False, "ahead_breaking", revision, reason)
    return SchemaState(True, "ahead", revision)


async def schema_state(conn: AsyncConnection) -> SchemaState:
    """Read alembic_version (and, when it names a revision this build does not know,
    schema_revisions) and classify: a couple of index reads for a readiness probe."""
    known = lineage()
    revision = await current_revision(conn)
    applied: dict[str, bool] | None = None
    if revision is not None and revision not in known:
        exists = await conn.execute(text("select to_regclass('schema_revisions') is not null"))
        if exists.scalar_one():
            query = select(SchemaRevision.revision, SchemaRevision.breaks_previous)
            rows = await conn.execute(query)
            applied = {row.revision: row.breaks_previous for row in rows}
    return classify(revision=revision, applied=applied, known=known)
