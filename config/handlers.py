"""Django's own error answers, in the shape of the surface the request was for.

DRF views answer their errors through core.errors' handler, but some errors never
reach a view: no URL matched (404), a view crashed (500), a ``Host`` that is not
served or a malformed multipart body (400), a failed CSRF check (403). Django answers
those with HTML pages, which an API client cannot parse. Here they answer:

- under ``/api/``: ``{"error": {"code", "message", "details"}}`` (core.errors);
- under ``/v1/`` (and Together's ``/v2/``, ``/v3/``): OpenAI's
  ``{"error": {"message", "type", "param", "code"}}``;
- anywhere else (the admin): Django's HTML pages.

config.urls names these as ``handler400`` ... ``handler500``; settings names
``csrf_failure`` as ``CSRF_FAILURE_VIEW``. With ``DEBUG=1`` Django shows its
technical pages for 404 and 500 instead, as it should in development.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import (
    DisallowedHost,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.views import csrf, defaults
from rest_framework.response import Response

from core.errors import (
    ApplicationError,
    Forbidden,
    InvalidInput,
    NotFound,
    ServerError,
    error_response,
    exception_handler,
)
from marketplace.workloads.errors import openai_exception_handler

Handler = Callable[[Exception, dict[str, Any]], Response | None]

# The JSON surfaces, by path prefix; the first that matches answers.
SURFACES: tuple[tuple[str, Handler], ...] = (
    ("/api/", exception_handler),
    ("/v1/", openai_exception_handler),
    ("/v2/", openai_exception_handler),  # Together's projects and discovery
    ("/v3/", openai_exception_handler),
)


def _surface(request: HttpRequest) -> Handler | None:
    path = request.path_info
    return next((handler for prefix, handler in SURFACES if path.startswith(prefix)), None)


def _json(handler: Handler, error: Exception) -> HttpResponse:
    response = error_response(error, handler=handler)
    if response is None:  # every error built here is one the handlers answer
        raise TypeError(f"no JSON answer for {error!r}")
    return response


def _bad_request_error(exception: Exception | None) -> Exception:
    if isinstance(exception, RequestDataTooBig):
        return exception  # core.errors answers it: 413
    if isinstance(exception, DisallowedHost):
        return InvalidInput(
            "the Host header names a host this server does not serve",
            details={"header": "Host"},
        )
    if isinstance(exception, TooManyFieldsSent | TooManyFilesSent):
        return InvalidInput("the request body has more fields or files than the server accepts")
    if isinstance(exception, MultiPartParserError):
        return InvalidInput(f"the multipart body is malformed: {exception}")
    if isinstance(exception, SuspiciousOperation):
        return InvalidInput("the request was refused as malformed")
    return InvalidInput(f"the request is malformed: {exception}" if exception else "bad request")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    handler = _surface(request)
    if handler is None:
        return defaults.bad_request(request, exception)
    return _json(handler, _bad_request_error(exception))


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    handler = _surface(request)
    if handler is None:
        return defaults.permission_denied(request, exception)
    message = str(exception) if exception and str(exception) else "permission denied"
    return _json(handler, Forbidden(message))


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    handler = _surface(request)
    if handler is None:
        return defaults.page_not_found(request, exception)
    # The same answer whether no route matched or a path id is out of range: either
    # way nothing is there.
    return _json(
        handler,
        NotFound(f"nothing at {request.path_info}", details={"path": request.path_info}),
    )


def server_error(request: HttpRequest) -> HttpResponse:
    handler = _surface(request)
    if handler is None:
        return defaults.server_error(request)
    request_id = getattr(request, "request_id", None)
    error: ApplicationError = ServerError(
        "the server failed to answer this request; the failure is logged"
        + (f" under request id {request_id}" if request_id else ""),
        details={"request_id": request_id} if request_id else {},
    )
    return _json(handler, error)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    handler = _surface(request)
    if handler is None:
        return csrf.csrf_failure(request, reason)
    return _json(
        handler, Forbidden(f"CSRF check failed: {reason}" if reason else "CSRF check failed")
    )
