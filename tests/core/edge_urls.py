"""A test-only urlconf: the site's own patterns and error handlers, plus views that
crash or refuse in ways no real view does on purpose."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import (  # noqa: F401  (the handlers under test)
    handler400,
    handler403,
    handler404,
    handler500,
)
from config.urls import urlpatterns as site_patterns
from marketplace.workloads.apis import V1Api

SECRET = "the-secret-detail-of-a-bug"


class CrashApi(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        raise RuntimeError(SECRET)


class V1CrashApi(V1Api):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        raise RuntimeError(SECRET)


def plain_crash(request: HttpRequest) -> HttpResponse:
    raise RuntimeError(SECRET)


def plain_denied(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied("members only")


def plain_form(request: HttpRequest) -> HttpResponse:
    """A plain Django view that reads a form body (CSRF-checked, parsed by Django)."""
    return JsonResponse({"fields": sorted(request.POST)})


urlpatterns = [
    path("api/v1/test/crash", CrashApi.as_view()),
    path("api/v1/test/plain-crash", plain_crash),
    path("api/v1/test/denied", plain_denied),
    path("api/v1/test/form", plain_form),
    path("v1/test/crash", V1CrashApi.as_view()),
    path("v1/test/form", plain_form),
    path("test/crash", plain_crash),
    *site_patterns,
]
