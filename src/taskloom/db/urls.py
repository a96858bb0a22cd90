"""Turn the PostgreSQL URLs operators write into the form SQLAlchemy's asyncpg driver expects."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url


def async_url(url: str) -> URL:
    """`postgresql://…` (or `postgres://`) as a SQLAlchemy asyncpg URL."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    return parsed.set(drivername="postgresql+asyncpg")
