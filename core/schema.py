"""OpenAPI pieces shared by every app: the error shape and the authentication schemes.

Imported from CoreConfig.ready() so drf-spectacular knows the extensions.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="stable, machine-readable: e.g. insufficient_funds")
    message = serializers.CharField(help_text="what was wrong and where")
    details = serializers.DictField(help_text="e.g. {'fields': {'name': ['...']}}")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


_DESCRIPTIONS = {
    400: "bad input: details say what and where",
    401: "no API key, or an invalid or revoked one",
    402: "not enough credit: details say how much is missing",
    403: "your role (or an agent key's scope) does not allow this",
    404: "no such object in your organization",
    409: "conflicts with the current state (or the same Idempotency-Key is still running)",
    412: "the If-Match etag is not the object's current one",
    413: "request body too large",
    422: "Idempotency-Key reused with a different request",
    429: "rate limited: see Retry-After",
    503: "not available now: retry later (see Retry-After where given)",
}


def error_responses(*codes: int) -> dict[int, Any]:
    """``extend_schema(responses={200: X, **error_responses(401, 403)})``."""
    return {
        code: OpenApiResponse(response=ErrorSerializer, description=_DESCRIPTIONS[code])
        for code in codes
    }


class OpenAIErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField(help_text="what was wrong and where")
    type = serializers.CharField(help_text="e.g. invalid_request_error, authentication_error")
    param = serializers.CharField(
        allow_null=True, help_text="the parameter or field at fault, if one is"
    )
    code = serializers.CharField(allow_null=True, help_text="stable: e.g. file_not_found")


class OpenAIErrorSerializer(serializers.Serializer):
    """The error shape of the OpenAI- and Together-compatible ``/v1/`` surface (what
    both official clients parse), rather than ``ErrorSerializer``."""

    error = OpenAIErrorDetailSerializer()


def openai_error_responses(*codes: int) -> dict[int, Any]:
    """``error_responses`` for the ``/v1/`` surface: the same statuses, OpenAI's shape."""
    return {
        code: OpenApiResponse(response=OpenAIErrorSerializer, description=_DESCRIPTIONS[code])
        for code in codes
    }


# What the framework answers to any request body, whichever view it is sent to: a body
# over DATA_UPLOAD_MAX_MEMORY_SIZE (core.parsers, core.errors) and a media type the
# view has no parser for (DRF). Declared once here rather than on every view.
_BODY_STATUSES = (413, 415)
# The surfaces whose errors come in OpenAI's shape: /v1/ and Together's /v2/, /v3/.
OPENAI_SHAPED = ("/v1/", "/v2/", "/v3/")
_DESCRIPTIONS[415] = "the request's Content-Type is not one this operation reads"


def declare_body_statuses(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every operation that takes a request body
    declares ``_BODY_STATUSES``, in its surface's error shape (OpenAI's under ``/v1/``)."""
    for path, operations in result.get("paths", {}).items():
        shape = "OpenAIError" if path.startswith(OPENAI_SHAPED) else "Error"
        for operation in operations.values():
            if "requestBody" not in operation:
                continue
            responses = operation.setdefault("responses", {})
            for code in _BODY_STATUSES:
                responses.setdefault(
                    str(code),
                    {
                        "description": _DESCRIPTIONS[code],
                        "content": {
                            "application/json": {
                                "schema": {"$ref": f"#/components/schemas/{shape}"}
                            }
                        },
                    },
                )
    return result


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's AutoSchema, also declaring what the framework answers before a
    view runs, from the view's own classes (so no view has to repeat them):

    - 401 where API keys are read: a missing, invalid or revoked key;
    - 403 where agent keys are not admitted (core.permissions.view_admits_scope): an
      agent key outside the agent API;
    - 429 where the view is throttled.

    In the view's error shape: OpenAI's on the ``/v1/`` surface."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        # The one hook drf-spectacular (pinned) offers for the responses of every view.
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        from core.authentication import ApiKeyAuthentication
        from core.permissions import view_admits_scope

        view = self.view
        codes = []
        if any(isinstance(a, ApiKeyAuthentication) for a in view.get_authenticators()):
            codes.append(401)
            if not view_admits_scope(view, "agent"):
                codes.append(403)
        if view.get_throttles():
            codes.append(429)
        shape = OpenAIErrorSerializer if self.path.startswith(OPENAI_SHAPED) else ErrorSerializer
        for code in codes:
            if str(code) not in responses:
                responses[str(code)] = self._get_response_for_code(
                    OpenApiResponse(response=shape, description=_DESCRIPTIONS[code]),
                    str(code),
                    ["application/json"],  # errors are JSON whatever the view renders
                    direction=direction,
                )
        return responses


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "core.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer tdm_<prefix>_<secret>",
        }


class PortalSessionScheme(OpenApiAuthenticationExtension):
    target_class = "core.authentication.SessionAuthentication"
    name = "portalSession"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        from django.conf import settings

        return {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME}
