"""A test-only urlconf: POST views whose effect (an API key row) is easy to count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core import services
from core.idempotency import idempotent
from core.tenancy import get_caller

# Callables a test queues; each request pops one and runs it after the effect.
AFTER_EFFECT: list[Callable[[Request], Any]] = []


def _create(request: Request) -> Response:
    caller = get_caller(request)
    created = services.api_key_create(
        organization=caller.organization, name=str(request.data.get("name", "thing"))
    )
    if AFTER_EFFECT:
        answer = AFTER_EFFECT.pop(0)(request)
        if answer is not None:
            return answer
    return Response(
        {"id": created.api_key.pk, "name": created.api_key.name, "at": created.api_key.created_at},
        status=201,
    )


class ThingCreateApi(APIView):
    @idempotent()
    def post(self, request: Request) -> Response:
        return _create(request)


class StrictThingCreateApi(APIView):
    @idempotent(required=True)
    def post(self, request: Request) -> Response:
        return _create(request)


class CalloutThingCreateApi(APIView):
    @idempotent(atomic=False)
    def post(self, request: Request) -> Response:
        return _create(request)


urlpatterns = [
    path("things/", ThingCreateApi.as_view()),
    path("strict-things/", StrictThingCreateApi.as_view()),
    path("callout-things/", CalloutThingCreateApi.as_view()),
]
