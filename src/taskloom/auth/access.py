"""Who may call a route, declared next to it:

    @router.get("/workflows", openapi_extra=access("viewer"))

The declaration is published in the OpenAPI document (`x-taskloom-access`) and checked by
`tests/security/test_authorization_matrix.py`, which calls every route as every kind of caller
and fails for a route without a declaration or whose behaviour differs from it. The dependency
(`Viewer`, `Admin`, ...) enforces; the declaration states the intent; the test keeps them equal.

Levels: `public` (no credentials), `authenticated` (any signed-in person, with or without a role
in the current organization), `viewer` < `member` < `admin` < `owner` (role in the current
organization), `superuser` (instance administrators). `api_key=False` marks routes an API key may
not call (they act on the person's own account or sessions).
"""

from __future__ import annotations

from typing import Any, Literal

Level = Literal["public", "authenticated", "viewer", "member", "admin", "owner", "superuser"]
ACCESS_KEY = "x-taskloom-access"


def access(level: Level, *, api_key: bool = True) -> dict[str, Any]:
    return {ACCESS_KEY: {"level": level, "api_key": api_key}}
