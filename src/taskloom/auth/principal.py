"""Who is making a request, as established from the database (never from token claims alone)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from taskloom.errors import NotFound
from taskloom.orgs.models import Role


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    org_id: uuid.UUID | None
    role: Role | None  # None when the user is not (or no longer) a member of org_id
    kind: Literal["session", "api_key"]
    session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    is_superuser: bool = False
    expires_at: datetime | None = None  # when the session or API key stops being valid

    def has_role(self, minimum: Role) -> bool:
        return self.role is not None and self.role.at_least(minimum)

    def current_org(self) -> uuid.UUID:
        """The organization the request acts in, or NotFound (no rows without one)."""
        if self.org_id is None:
            raise NotFound("no current organization")
        return self.org_id
