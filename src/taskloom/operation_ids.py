"""Stable, readable OpenAPI operationIds (`workflows_list`, `executions_cancel`), which generated
clients use as method names: the resource (the path's first segment after `/api`) followed by
the route function's name without that resource's own words. FastAPI's default
(`list_workflows_api_workflows_get`) changes whenever a path does.
`tests/test_openapi.py` pins the list, so a rename is a deliberate, reviewed change."""

from __future__ import annotations

from fastapi.routing import APIRoute


def operation_id(route: APIRoute) -> str:
    segments = [s for s in route.path.split("/") if s and not s.startswith("{")]
    if segments[:1] == ["api"]:
        segments = segments[1:]
    if not segments:
        return route.name
    resource = segments[0].replace("-", "_")
    words = route.name.split("_")
    for noun in (resource.split("_"), [*resource.split("_")[:-1], resource.rstrip("s")]):
        for start in range(len(words) - len(noun) + 1):
            if words[start : start + len(noun)] == noun:
                words = words[:start] + words[start + len(noun) :]
                break
    return f"{resource}_{'_'.join(words) or route.name}"
