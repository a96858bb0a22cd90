"""No route shadows another: for every route, a path made from its own template reaches it,
not an earlier route (app.py orders the routers for speed, the busiest first, which is safe
only while this holds)."""

from __future__ import annotations

import re

from fastapi import FastAPI
from starlette.routing import BaseRoute, Match, Route, compile_path

from taskloom.app import create_app
from taskloom.config import Settings

PARAMETER = re.compile(r"{([^}:]+)(:[^}]+)?}")


def _routes(routes: list[BaseRoute]) -> list[Route]:
    """The app's routes in the order they are tried, included routers flattened."""
    flat: list[Route] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            flat += _routes(inner.routes)
        elif isinstance(route, Route):
            flat.append(route)
    return flat


def _sample(path: str) -> str:
    """The template with each parameter replaced by a value no static segment has."""
    return PARAMETER.sub(lambda m: f"sample-{m.group(1)}", path)


def _first_match(routes: list[Route], method: str, path: str) -> Route | None:
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
    return None


def test_every_route_is_reached_by_its_own_paths() -> None:
    app: FastAPI = create_app(
        Settings(
            _env_file=None,  # type: ignore[call-arg]
            taskloom_env="test",
            database_url="postgresql://taskloom@127.0.0.1/unused",
            redis_url="redis://127.0.0.1:6379/0",
        )
    )
    routes = _routes(app.router.routes)
    assert len(routes) > 100  # the whole API, the web UI and the hooks
    shadowed = []
    for route in routes:
        regex, _, _ = compile_path(route.path)
        assert regex.match(_sample(route.path)), route.path
        for method in sorted(route.methods or {"GET"}):
            reached = _first_match(routes, method, _sample(route.path))
            if reached is not route:
                shadowed.append((method, route.path, reached.path if reached else None))
    assert shadowed == []
