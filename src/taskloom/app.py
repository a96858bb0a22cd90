"""FastAPI factory: middleware, routers, lifespan. Wiring only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from taskloom import __version__
from taskloom.ai.routes import router as ai_router
from taskloom.audit.routes import router as audit_router
from taskloom.auth.api_limits import RateLimitHeadersMiddleware
from taskloom.auth.read_lane import ReadLane
from taskloom.auth.routes import router as auth_router
from taskloom.config import Settings, get_settings
from taskloom.errors import ERROR_RESPONSES, UnexpectedErrorMiddleware, install_error_handlers
from taskloom.executions import routes as execution_routes
from taskloom.executions.lane import ExecuteLane
from taskloom.executions.routes import router as executions_router
from taskloom.executions.streams import close_reader
from taskloom.flags.routes import router as flags_router
from taskloom.gdpr.routes import router as gdpr_router
from taskloom.health.routes import router as health_router
from taskloom.input_guard import InputGuardMiddleware
from taskloom.observability import sentry, tracing
from taskloom.observability.body_limit import BodySizeLimitMiddleware
from taskloom.observability.logging import configure_logging
from taskloom.observability.metrics import configure_slos
from taskloom.observability.requests import ObservedRequests
from taskloom.observability.routes import router as metrics_router
from taskloom.operation_ids import operation_id
from taskloom.orgs.routes import router as orgs_router
from taskloom.runtime import Runtime, open_runtime
from taskloom.secrets.routes import router as secrets_router
from taskloom.sso.auth_routes import router as sso_auth_router
from taskloom.sso.routes import router as sso_admin_router
from taskloom.tools.routes import router as connections_router
from taskloom.triggers.hooks import router as hooks_router
from taskloom.triggers.routes import router as triggers_router
from taskloom.triggers.schedule_routes import router as schedules_router
from taskloom.web.routes import router as web_router
from taskloom.web.security_headers import SecurityHeadersMiddleware
from taskloom.webhooks.routes import router as webhooks_router
from taskloom.workflows import routes as workflow_routes
from taskloom.workflows.routes import router as workflows_router
from taskloom.workflows.version_routes import router as versions_router


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. With `runtime` given (tests, `taskloom up`) the caller owns its resources;
    otherwise the lifespan opens them from `settings` and closes them on shutdown."""
    settings = settings or (runtime.settings if runtime else get_settings())
    configure_logging(settings)
    tracing.configure(settings, service="taskloom-api")
    sentry.configure(settings, service="taskloom-api")
    configure_slos(
        window_seconds=settings.sli_window_seconds,
        availability_target=settings.slo_availability_target,
        latency_target_seconds=settings.slo_latency_p95_seconds,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            try:
                yield
            finally:
                await close_reader(app)
            return
        opened = await open_runtime(settings)
        app.state.runtime = opened
        try:
            yield
        finally:
            await close_reader(app)
            await opened.close()

    app = FastAPI(
        title="Taskloom",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        responses=ERROR_RESPONSES,
        generate_unique_id_function=operation_id,
    )
    install_error_handlers(app)
    # Routes are tried one after another, so a request pays for every route before its own:
    # the API's busiest (listing and running workflows) come first. No route shadows another
    # (tests/test_routes.py), so the order changes nothing else.
    app.include_router(workflows_router)
    app.include_router(executions_router)
    app.include_router(versions_router)
    app.include_router(health_router)
    app.include_router(auth_router)
    app.include_router(orgs_router)
    app.include_router(gdpr_router)
    app.include_router(audit_router)
    app.include_router(connections_router)
    app.include_router(secrets_router)
    app.include_router(ai_router)
    app.include_router(flags_router)
    app.include_router(sso_admin_router)
    app.include_router(sso_auth_router)
    app.include_router(schedules_router)
    app.include_router(webhooks_router)
    app.include_router(triggers_router)
    app.include_router(hooks_router)
    app.include_router(metrics_router)
    app.include_router(web_router)
    # Added first = innermost; the request id (added last) wraps everything, including the 413
    # for oversized bodies. Unexpected errors become JSON 500s inside the request-id scope;
    # input is checked for what PostgreSQL cannot store (NUL, NaN, surrogates) after the limit.
    # The usual list request and POST …/execute are answered without FastAPI's machinery
    # (auth/read_lane.py, executions/lane.py).
    app.add_middleware(ReadLane, lanes=(workflow_routes.LIST_LANE, execution_routes.LIST_LANE))
    app.add_middleware(ExecuteLane)
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(InputGuardMiddleware, raw_body_paths=("/hooks/",))
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(SecurityHeadersMiddleware, production=settings.is_production)
    app.add_middleware(ObservedRequests, log_requests=settings.access_log)
    tracing.instrument_app(app)
    return app
