"""What the invoicing endpoints share: periods and choices read from the query
string, and the path parameters of the schema."""

from __future__ import annotations

from datetime import date

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
)
from rest_framework.request import Request

from core.errors import InvalidInput


def _query_period(request: Request, name: str = "period") -> date | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    return _period(raw, name)


def _period(raw: str, name: str = "period") -> date:
    try:
        year, month = (int(part) for part in raw.split("-"))
        if len(raw) != 7 or year < 2000:
            raise ValueError(raw)
        return date(year, month, 1)
    except ValueError:
        raise InvalidInput(
            f"{name} must be a month as YYYY-MM (e.g. 2026-10), not {raw[:20]!r}",
            details={"parameter": name},
        ) from None


def _query_choice(request: Request, name: str, choices: list[str]) -> str | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if raw not in choices:
        raise InvalidInput(
            f"{name} must be one of {', '.join(choices)}", details={"parameter": name}
        )
    return raw


_INVOICE_ID = OpenApiParameter("invoice_id", OpenApiTypes.INT, OpenApiParameter.PATH)
_ORGANIZATION_ID = OpenApiParameter("organization_id", OpenApiTypes.INT, OpenApiParameter.PATH)
