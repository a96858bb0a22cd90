"""The UI's route class: every page handler's exceptions become HTML pages (the JSON API keeps
its `{"error": ...}` bodies from taskloom/errors.py), queued cookies are applied to whatever
response goes out, and no page is stored by caches (pages hold personal data).

Domain errors keep their status code and message: a 404 is a "not found" page, a 403 a
"not allowed" page, a 409 names the conflict. A session that is missing or over redirects to
the sign-in page; a form without a valid CSRF token is a 403 page.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

import structlog
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from taskloom.auth.deps import get_runtime
from taskloom.errors import DomainError
from taskloom.observability import sentry
from taskloom.observability.request_id import current_request_id
from taskloom.web import cookies
from taskloom.web.csrf import CsrfRejected
from taskloom.web.rendering import redirect, render_error
from taskloom.web.session import SignInRequired

log = structlog.get_logger("taskloom.web")

_TITLES = {
    400: "That request was not valid",
    401: "Not signed in",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    410: "Gone",
    413: "Too large",
    422: "Invalid input",
    429: "Too many requests",
}
CSRF_MESSAGE = (
    "This form could not be accepted: its security token is missing or does not belong to "
    "your session (for example after signing in again in another tab). Go back, reload the "
    "page and submit the form again."
)


def _sign_in_redirect(request: Request) -> Response:
    target = request.url.path
    if request.method != "GET" or not target.startswith("/ui/"):
        target = "/ui/"
    elif request.url.query:
        target += "?" + request.url.query
    return redirect(f"/ui/login?next={quote(target, safe='')}")


def _page_for(request: Request, error: Exception) -> Response:
    if isinstance(error, SignInRequired):
        return _sign_in_redirect(request)
    if isinstance(error, CsrfRejected):
        return render_error(request, status=403, title="Form expired", message=CSRF_MESSAGE)
    if isinstance(error, DomainError):
        title = _TITLES.get(error.status_code, "Something went wrong")
        response = render_error(
            request, status=error.status_code, title=title, message=error.message
        )
        if error.headers and "Retry-After" in error.headers:
            response.headers["Retry-After"] = error.headers["Retry-After"]
        return response
    assert isinstance(error, RequestValidationError)
    # Only path parameters are validated by FastAPI here (forms are parsed by the pages): an
    # id that is not a UUID names nothing.
    return render_error(request, status=404, title="Not found", message="There is no such page.")


class UiRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except (SignInRequired, CsrfRejected, DomainError, RequestValidationError) as error:
                response = _page_for(request, error)
            except Exception as bug:
                # As errors.py does for the API (logged, sent to Sentry, no details shown), but
                # as a page, and with the queued cookies: a rotated refresh token must not be
                # lost because the page then failed.
                log.exception(
                    "unhandled_error", path=request.url.path, error_type=type(bug).__name__
                )
                sentry.capture(bug, route=self.path, request_id=current_request_id())
                response = render_error(
                    request,
                    status=500,
                    title="Something went wrong",
                    message="An unexpected error occurred; it has been logged. Please try again.",
                )
            secure = get_runtime(request).settings.is_production
            cookies.apply_queued(request, response, secure=secure)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return handle
