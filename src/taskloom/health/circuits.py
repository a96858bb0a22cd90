"""Circuit breakers as the health endpoints show them. Breaker names carry connection and
organization ids (`tool:<id>`, `ai:<id>`, `ai:instance:<provider>:<org id>`) of every
organization, so anyone sees counts by state only; a breaker by name goes to an instance
administrator (all of them) or to an organization's admin (their own organization's connections
and its calls with the instance's AI keys)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.ai.executor import instance_breaker
from taskloom.auth.principal import Principal
from taskloom.breakers import Breaker, BreakerState
from taskloom.errors import Forbidden
from taskloom.orgs.models import Role
from taskloom.tools import service as tools
from taskloom.tools.registry import AI_PROVIDERS


def state_counts(breakers: list[Breaker]) -> dict[str, int]:
    """How many breakers are in each state, every state named (zero included)."""
    counts = {state.name.lower(): 0 for state in BreakerState}
    for breaker in breakers:
        counts[breaker.state.name.lower()] += 1
    return counts


async def visible_breakers(
    *, db: AsyncSession, principal: Principal, breakers: list[Breaker]
) -> list[Breaker]:
    """The breakers `principal` may see by name, or Forbidden for anyone but an admin of the
    current organization or an instance administrator."""
    if principal.is_superuser:
        return breakers
    if principal.org_id is None or not principal.has_role(Role.ADMIN):
        raise Forbidden(
            "circuit breakers by connection need the admin role or instance administration"
        )
    ids = {str(row.id) for row in await tools.list_connections(db=db, principal=principal)}
    own = {f"{kind}:{connection_id}" for connection_id in ids for kind in ("tool", "ai")}
    own |= {instance_breaker(provider, principal.org_id) for provider in AI_PROVIDERS}
    return [breaker for breaker in breakers if breaker.name in own]


def describe(breaker: Breaker) -> dict[str, object]:
    return {"name": breaker.name, "state": breaker.state.name.lower(), "failures": breaker.failures}
