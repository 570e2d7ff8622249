"""Integers at the edge: the one place that bounds them to what the database holds.

A whole number from a request (a path id, a query filter, a header, a body field)
that does not fit its column must be refused where it enters, not left to the
database: PostgreSQL's ``bigint`` and SQLite's ``INTEGER`` stop at 2**63 - 1, and
``integer`` (IntegerField, PositiveIntegerField) at 2**31 - 1. Every primary key here
is a BigAutoField, so an id is 1 to ``BIGINT_MAX``.

- ``<id:name>`` in a URL pattern: ``DatabaseIdConverter``, registered once in
  ``core.apps``. A number out of range does not match, so it is a 404 like any id
  that names nothing.
- ``query_int`` / ``query_id``: a query parameter, a 400 naming the parameter.
- ``parse_whole_number``: the plain check, for a header or anything else.
- ``bound_integer_fields``: every DRF ``IntegerField`` declared without bounds gets
  the 64-bit range, so a body's number past it is a 400 naming the field (a field
  that fills a 32-bit column names ``INT_MAX`` itself).
"""

from __future__ import annotations

from typing import Any, overload

from rest_framework.request import Request

from core.errors import InvalidInput

BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1  # integer / PositiveIntegerField columns
_MAX_DIGITS = len(str(BIGINT_MAX))


def parse_whole_number(raw: str, *, low: int, high: int) -> int | None:
    """``raw`` as an integer from ``low`` to ``high``, or None when it is anything
    else: ASCII digits only (``int()`` would take ``"١٢"``, ``" 7 "`` or ``"1_0"``), an
    optional leading minus where ``low`` is negative."""
    digits = raw[1:] if raw.startswith("-") and low < 0 else raw
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    if len(digits.lstrip("0")) > _MAX_DIGITS:  # never convert a megabyte of digits
        return None
    value = int(raw)
    return value if low <= value <= high else None


class DatabaseIdConverter:
    """``<id:lease_id>``: a primary key, 1 to 2**63 - 1."""

    regex = "[0-9]+"

    def to_python(self, value: str) -> int:
        number = parse_whole_number(value, low=1, high=BIGINT_MAX)
        if number is None:
            raise ValueError(value)  # no match: the resolver answers 404
        return number

    def to_url(self, value: int) -> str:
        return str(value)


@overload
def query_int(request: Request, name: str, *, low: int, high: int, default: int) -> int: ...
@overload
def query_int(
    request: Request, name: str, *, low: int, high: int, default: None = None
) -> int | None: ...
def query_int(
    request: Request, name: str, *, low: int, high: int, default: int | None = None
) -> int | None:
    """The whole-number query parameter ``name`` (``default`` when absent); anything
    else is a 400 naming it and the range."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = parse_whole_number(raw, low=low, high=high)
    if value is None:
        raise InvalidInput(
            f"{name} must be a whole number from {low} to {high}", details={"parameter": name}
        )
    return value


def query_id(request: Request, name: str, *, what: str | None = None) -> int | None:
    """An id filter (``?order=12``): None when absent, a 400 naming ``name`` unless it
    is an id the database could hold."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    value = parse_whole_number(raw, low=1, high=BIGINT_MAX)
    if value is None:
        raise InvalidInput(
            f"{name} must be {what or 'an'} id: a whole number from 1 to {BIGINT_MAX}",
            details={"parameter": name},
        )
    return value


def bound_integer_fields() -> None:
    """Give every DRF ``IntegerField`` without its own bounds the 64-bit range.

    Called once from ``core.apps``. DRF leaves an undeclared bound open, so
    ``{"node_id": 99999999999999999999}`` would pass validation and fail in the
    database as a 500; with this it is a 400 naming the field, and the schema says
    ``int64``. A field that names its own ``min_value``/``max_value`` keeps it."""
    from rest_framework import serializers

    original = serializers.IntegerField.__init__
    if getattr(original, "bounded", False):
        return

    def __init__(self: serializers.IntegerField, **kwargs: Any) -> None:
        kwargs.setdefault("max_value", BIGINT_MAX)
        kwargs.setdefault("min_value", BIGINT_MIN)
        original(self, **kwargs)

    __init__.bounded = True  # type: ignore[attr-defined]
    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    serializers.IntegerField.__init__ = __init__  # type: ignore[method-assign]
