"""The one exception hierarchy, and the one DRF exception handler.

Every error the API returns has the same shape::

    {"error": {"code": "insufficient_funds", "message": "...", "details": {...}}}

Services raise ``ApplicationError`` subclasses; views never build error
responses by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    """Base of every error a service may raise on purpose."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


class InvalidInput(ApplicationError):
    code = "invalid"


class InvalidHeader(InvalidInput, drf_exceptions.APIException):
    """A malformed request header found while authenticating (``X-Organization``).
    Also a DRF ``APIException``, so DRF's authentication step marks the request
    unauthenticated before the error propagates, as it does for its own."""

    def __init__(self, message: str, *, header: str) -> None:
        super().__init__(message, details={"header": header})


class NotFound(ApplicationError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Forbidden(ApplicationError):
    status_code = status.HTTP_403_FORBIDDEN
    code = "forbidden"


class Conflict(ApplicationError):
    status_code: int = status.HTTP_409_CONFLICT
    code = "conflict"


class ConcurrencyConflict(Conflict):
    """An append named a stream version that someone else wrote first."""

    code = "concurrency_conflict"


class IdempotencyConflict(Conflict):
    """An idempotency key or transfer id was reused with a different request."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "idempotency_key_reused"


class InsufficientFunds(ApplicationError):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    code = "insufficient_funds"


class LimitExceeded(ApplicationError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    code = "rate_limited"


class ServerError(ApplicationError):
    """Never raised on purpose: the answer config.handlers gives for a bug (a 500),
    in the API's shape and without the traceback, which goes to the log."""

    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    code = "internal_error"


_DRF_CODES = {
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.PermissionDenied: "forbidden",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "rate_limited",
    drf_exceptions.ParseError: "parse_error",
    drf_exceptions.ValidationError: "invalid",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn DRF's nested error detail into {"field.sub[0]": ["message", ...]}."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                name = f"{prefix}[{key}]"  # DRF keys list items by index
            else:
                name = key if not prefix else f"{prefix}.{key}"
            if key == "non_field_errors" and not prefix:
                name = "non_field_errors"
            out.update(_flatten(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                out.update(_flatten(item, f"{prefix}[{index}]"))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def _validation_message(fields: dict[str, list[str]]) -> str:
    parts = [f"{name}: {messages[0]}" for name, messages in fields.items() if messages]
    return "; ".join(parts) or "invalid input"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    headers: dict[str, str] = {}
    if isinstance(exc, ApplicationError):
        from rest_framework.views import set_rollback  # here: views imports our auth

        set_rollback()
        return Response(
            error_body(exc.code, exc.message, exc.details),
            status=exc.status_code,
            headers=exc.headers,
        )
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        return Response(
            error_body("request_too_large", "request body is larger than the server accepts"),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    elif isinstance(exc, DjangoValidationError):
        exc = drf_exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        )

    if not isinstance(exc, drf_exceptions.APIException):
        return None  # a real bug: let Django log it and answer 500

    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, drf_exceptions.ValidationError):
        fields = _flatten(exc.detail)
        body = error_body(code, _validation_message(fields), {"fields": fields})
    else:
        body = error_body(code, str(exc.detail))
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if getattr(exc, "wait", None) is not None:
        headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]  # DRF rounds up
    status_code = exc.status_code
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        status_code = status.HTTP_401_UNAUTHORIZED
        headers.setdefault("WWW-Authenticate", 'Bearer realm="api"')
    return Response(body, status=status_code, headers=headers)


def error_response(
    exc: Exception,
    *,
    handler: Callable[[Exception, dict[str, Any]], Response | None] | None = None,
) -> HttpResponse | None:
    """``exception_handler``'s answer (or ``handler``'s: another surface's shape) for
    a view that is not DRF's (the agent heartbeat, Django's own 404 and 500): the same
    status, body and headers, as plain JSON. None for a real bug, which the caller
    re-raises."""
    answer = (handler or exception_handler)(exc, {})
    if answer is None:
        return None
    response = HttpResponse(
        msgspec.json.encode(answer.data),
        status=answer.status_code,
        content_type="application/json",
    )
    for name in ("WWW-Authenticate", "Retry-After"):
        if answer.has_header(name):
            response[name] = answer[name]
    return response
