"""Errors on the OpenAI/Together surface, in the shape their clients parse::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "training_file",
               "code": "invalid_training_file"}}

Services raise the usual ``core.errors`` classes; the handler lets the one DRF
handler (core.errors.exception_handler) decide status and code, then reshapes the
body. ``param`` comes from the error's details (``param``, a query ``parameter``, a
``header``, or the first field of a validation error).
"""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.response import Response

from core.errors import ApplicationError, Conflict, InsufficientFunds, InvalidInput, NotFound
from core.errors import exception_handler as core_exception_handler

_TYPES = {
    status.HTTP_400_BAD_REQUEST: "invalid_request_error",
    status.HTTP_401_UNAUTHORIZED: "authentication_error",
    status.HTTP_402_PAYMENT_REQUIRED: "insufficient_quota",
    status.HTTP_403_FORBIDDEN: "permission_error",
    status.HTTP_404_NOT_FOUND: "invalid_request_error",
    status.HTTP_409_CONFLICT: "invalid_request_error",
    status.HTTP_413_REQUEST_ENTITY_TOO_LARGE: "invalid_request_error",
    status.HTTP_422_UNPROCESSABLE_ENTITY: "invalid_request_error",
    status.HTTP_429_TOO_MANY_REQUESTS: "rate_limit_error",
}


def invalid(message: str, *, param: str | None, code: str = "invalid_value") -> InvalidInput:
    error = InvalidInput(message, details={"param": param} if param else {})
    error.code = code
    return error


def not_found(what: str, identifier: str, *, param: str | None = None) -> NotFound:
    details = {"param": param} if param else {}
    error = NotFound(f"No such {what}: {identifier}", details=details)
    error.code = f"{what.replace(' ', '_')}_not_found"
    return error


def conflict(message: str, *, code: str, param: str | None = None, **details: Any) -> Conflict:
    error = Conflict(message, details={"param": param, **details} if param else details)
    error.code = code
    return error


def insufficient_credit(
    *, needed_micros: int, available_micros: int, currency: str
) -> ApplicationError:
    missing = needed_micros - available_micros
    error = InsufficientFunds(
        f"this job is estimated at {_money(needed_micros)} {currency} but your available credit "
        f"is {_money(available_micros)} {currency}: add at least {_money(missing)} {currency}",
        details={
            "needed_micros": needed_micros,
            "available_micros": available_micros,
            "missing_micros": missing,
            "missing": _money(missing),
            "currency": currency,
        },
    )
    return error


def _money(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else f"{sign}{whole}.00"


class GenerationFailed(ApplicationError):
    """Generating one request's completion failed on our side (the engine's error,
    logged where it happened): a 500 for that request alone."""

    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    code = "generation_failed"


def openai_error_body(exc: ApplicationError) -> dict[str, Any]:
    """``exc`` in OpenAI's shape, for where no handler runs (an event of a stream
    whose 200 is already out)."""
    return {
        "error": {
            "message": exc.message,
            "type": _TYPES.get(exc.status_code, "api_error"),
            "param": _param(exc.details),
            "code": exc.code,
        }
    }


def _param(details: dict[str, Any]) -> str | None:
    # ``field`` is the runtime's name for it (runtime/inference.py, runtime/datasets.py).
    for key in ("param", "parameter", "header", "field"):
        if details.get(key):
            return str(details[key])
    fields = details.get("fields")
    if isinstance(fields, dict) and fields:
        first = next(iter(fields))
        return None if first == "non_field_errors" else str(first)
    return None


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = core_exception_handler(exc, context)
    if response is None or not isinstance(response.data, dict) or "error" not in response.data:
        return response
    inner = response.data["error"]
    details = inner.get("details") or {}
    body: dict[str, Any] = {
        "message": inner.get("message", ""),
        "type": _TYPES.get(response.status_code, "api_error"),
        "param": _param(details),
        "code": inner.get("code"),
    }
    # Together's client reads a 409 on upload for the id of the existing file.
    extra = {k: v for k, v in details.items() if k not in {"param", "fields"}}
    if extra:
        body["details"] = extra
    response.data = {
        "error": body,
        **({"file_id": details["file_id"]} if "file_id" in details else {}),
    }
    if response.status_code == status.HTTP_409_CONFLICT:
        # Both official clients retry a 409 as a lock timeout unless told not to; here
        # a 409 is the object's state, which a retry a moment later does not change.
        response["x-should-retry"] = "false"
    return response
