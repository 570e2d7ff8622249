"""Stripe's webhook: the signed event stored once, then applied by an actor."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments import webhooks
from payments.apis.common import error_responses
from payments.stripe_client import PaymentsUnavailable
from payments.tasks import stripe_event_process_task

# --- Stripe's webhook ----------------------------------------------------------------


class StripeWebhookApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []

    @extend_schema(
        operation_id="stripe_webhook",
        summary="Stripe's webhook endpoint",
        description="Verifies Stripe-Signature on the raw body (300 s tolerance), "
        "stores the event by id and answers 200; a worker processes it.",
        tags=["payments"],
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 503)},
    )
    def post(self, request: Request) -> Response:
        secret = settings.STRIPE_WEBHOOK_SECRET
        if not secret:
            raise PaymentsUnavailable(
                "webhooks are not configured on this server: set STRIPE_WEBHOOK_SECRET"
            )
        row, created = webhooks.stripe_event_receive(
            payload=request.body,
            signature=request.headers.get("Stripe-Signature"),
            secret=secret,
        )
        if created:
            stripe_event_process_task.send(row.event_id)
        return Response({"received": row.event_id, "duplicate": not created})
