"""``Idempotency-Key`` for POST views that move money or create orders and jobs.

Usage, on an APIView method::

    class OrderCreateApi(APIView):
        @idempotent(required=True)
        def post(self, request: Request) -> Response: ...

A client that retries with the same key and the same request (method, path with query
string, raw body) gets the first response again, status and JSON body, with an
``Idempotent-Replayed: true`` header, and nothing runs twice. The same key with a
different request is a 422 ``idempotency_key_reused``; a duplicate that arrives while
the first is still running is a 409. Keys are scoped to the caller's organization.

How it holds under concurrency: the key is claimed by inserting an IdempotentRequest
row in its own short transaction; the unique (organization, key) constraint lets
exactly one of any number of concurrent duplicates through. Then:

- ``atomic=True`` (the default): the view and the storing of its response run in one
  transaction, so its effects and the record that it ran commit together or not at
  all; on a deadlock or serialization failure the whole of it runs again (core.db).
  A claim left unfinished by a dead process can then be taken over after
  ``services.IDEMPOTENCY_CLAIM_TIMEOUT``; storing the response is fenced on the claim,
  so a run that was only slow, not dead, is rolled back instead of doubling the effect.
- ``atomic=False``: for views that call out (Stripe) and so must not hold a
  transaction open. Such a view must make its own effects idempotent under the same
  key (an event-store append with ``idempotency_key``, Stripe's own idempotency key),
  because a claim it abandoned is taken over and run again.

Only final answers are stored: a returned 2xx or 4xx ``Response``. When the view raises
(a validation error, insufficient funds, a bug) or answers 5xx, the claim is released
so that a retry runs afresh. Never use this on a view whose response holds a secret
(a new API key): stored responses are kept in the database as they are. Nor on file
upload views: the fingerprint reads the whole body, so the MAX_REQUEST_BYTES cap on
bodies held in memory applies.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import transaction
from django.http.request import RawPostDataException
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from core import services
from core.db import retry_transaction
from core.errors import Conflict, InvalidInput
from core.models import IdempotentRequest
from core.tenancy import get_caller

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 200

F = TypeVar("F", bound=Callable[..., Any])


class _StaleRun(Exception):
    """This run's claim was taken over while it ran: undo its effects."""


def idempotency_key(request: Request, *, required: bool) -> str | None:
    """The request's key, checked: 1 to 200 printable ASCII characters."""
    key = request.headers.get(HEADER)
    if key is None:
        if required:
            raise InvalidInput(
                f"the {HEADER} header is required on this endpoint "
                "(any unique string of up to 200 characters, e.g. a UUID)",
                details={"header": HEADER},
            )
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= ch <= "~" for ch in key):
        raise InvalidInput(
            f"the {HEADER} header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            details={"header": HEADER},
        )
    return key


def request_fingerprint(request: Request) -> str:
    """SHA-256 of method, path with query string and raw body."""
    try:
        body = request.body
    except RawPostDataException:
        # The stream was read before we got here (a parser ran early); fall back to the
        # parsed data in a canonical form.
        body = json.dumps(request.data, sort_keys=True, default=str).encode()
    digest = hashlib.sha256()
    digest.update(str(request.method).encode())
    digest.update(b"\n")
    digest.update(request.get_full_path().encode())
    digest.update(b"\n")
    digest.update(body)
    return digest.hexdigest()


def _is_final(response: Any) -> bool:
    return isinstance(response, Response) and (
        200 <= response.status_code < 300 or 400 <= response.status_code < 500
    )


def _json_body(response: Response) -> Any:
    # Stored as rendered, so a replay sends the very same JSON (datetimes, decimals).
    if response.data is None:
        return None
    return json.loads(JSONRenderer().render(response.data))


def idempotent(*, required: bool = False, atomic: bool = True) -> Callable[[F], F]:
    """Make an APIView handler (``post``) honour ``Idempotency-Key``; see the module doc."""

    def decorator(handler: F) -> F:
        @functools.wraps(handler)
        def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> Any:
            key = idempotency_key(request, required=required)
            if key is None:
                return handler(view, request, *args, **kwargs)
            claim = services.idempotent_request_claim(
                organization=get_caller(request).organization,
                key=key,
                method=str(request.method),
                path=request.path,
                request_hash=request_fingerprint(request),
            )
            if claim.replay is not None:
                status_code, body = claim.replay
                return Response(body, status=status_code, headers={REPLAYED_HEADER: "true"})
            try:
                if atomic:
                    return _run_atomic(handler, view, request, claim.request, args, kwargs)
                return _run(handler, view, request, claim.request, args, kwargs)
            except _StaleRun:
                raise Conflict(
                    "this request took too long and was superseded by a retry with the "
                    "same Idempotency-Key; its effects were undone",
                    details={"header": HEADER},
                ) from None
            except BaseException:
                services.idempotent_request_release(claim=claim.request)
                raise

        # Read by the schema's tests: a handler that honours the header documents it.
        wrapper.idempotency_key_required = required  # type: ignore[attr-defined]
        description = (
            "Makes a retry safe: the same key with the same request replays the first "
            "response; with a different request it is refused (422). Scoped to your "
            "organization; 1 to 200 printable ASCII characters."
        )
        return extend_schema(  # type: ignore[return-value]
            parameters=[
                OpenApiParameter(
                    HEADER,
                    OpenApiTypes.STR,
                    location=OpenApiParameter.HEADER,
                    required=required,
                    description=description,
                )
            ]
        )(wrapper)

    return decorator


def _run_atomic(
    handler: Callable[..., Any],
    view: Any,
    request: Request,
    claim: IdempotentRequest,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    # The outermost transaction owns retries on deadlock or serialization failure
    # (core.db), and here that is this one: services inside it cannot retry alone.
    @retry_transaction
    def attempt() -> tuple[Any, bool]:
        response = handler(view, request, *args, **kwargs)
        if not _is_final(response):
            transaction.set_rollback(True)  # a 5xx is not an answer: undo, let a retry run
            return response, False
        if not services.idempotent_request_complete(
            claim=claim, status_code=response.status_code, response_body=_json_body(response)
        ):
            raise _StaleRun
        return response, True

    response, final = attempt()
    if not final:
        services.idempotent_request_release(claim=claim)
    return response


def _run(
    handler: Callable[..., Any],
    view: Any,
    request: Request,
    claim: IdempotentRequest,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    response = handler(view, request, *args, **kwargs)
    if _is_final(response):
        # When the claim was taken over meanwhile, the other run answers for the key;
        # this one's effects are keyed too (see the module doc), so return as it is.
        services.idempotent_request_complete(
            claim=claim, status_code=response.status_code, response_body=_json_body(response)
        )
    else:
        services.idempotent_request_release(claim=claim)
    return response
