"""Operator finance: the daily reconciliation of Stripe clearing with Stripe."""

from __future__ import annotations

from datetime import date

from django.conf import settings
from django.utils.dateparse import parse_date
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
)
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import InvalidInput, NotFound
from core.money import CURRENCIES
from core.permissions import IsPlatformFinance
from payments import selectors
from payments.apis.common import error_responses

# --- operator finance: reconciliation --------------------------------------------------


class ReconciliationApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="stripe_reconciliation_retrieve",
        summary="A day's reconciliation of Stripe clearing with Stripe (operator finance)",
        tags=["payments"],
        parameters=[
            OpenApiParameter("day", OpenApiTypes.DATE, required=True),
            OpenApiParameter("currency", OpenApiTypes.STR, enum=sorted(CURRENCIES)),
        ],
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 401, 403, 404)},
    )
    def get(self, request: Request) -> Response:
        raw = request.query_params.get("day", "")
        try:
            day: date | None = parse_date(raw)
        except ValueError:
            day = None
        if day is None:
            raise InvalidInput("day must be a date (YYYY-MM-DD)", details={"parameter": "day"})
        currency = request.query_params.get("currency", settings.TANDEM_CURRENCY)
        if currency not in CURRENCIES:
            raise InvalidInput("unknown currency", details={"parameter": "currency"})
        found = selectors.reconciliation_differences(day=day, currency=currency)
        if found.run is None:
            raise NotFound(f"no reconciliation for {day} yet")
        run = found.run
        return Response(
            {
                "day": run.day,
                "currency": run.currency,
                "ledger_micros": run.ledger_micros,
                "stripe_micros": run.stripe_micros,
                "matched": run.matched,
                "ran_at": run.ran_at,
                "differences": [
                    {
                        "kind": d.kind,
                        "source_id": d.source_id,
                        "ledger_micros": d.ledger_micros,
                        "stripe_micros": d.stripe_micros,
                        "transfer_ids": d.transfer_ids,
                        "balance_transactions": d.balance_transactions,
                    }
                    for d in found.differences
                ],
            }
        )
