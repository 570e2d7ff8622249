"""Cursor pagination for every list endpoint, and the helpers views use with it."""

from __future__ import annotations

from functools import cache
from typing import Any

from django.db.models import QuerySet
from rest_framework import pagination, serializers
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from core.errors import InvalidInput


class CursorPagination(pagination.CursorPagination):
    """Stable cursor pages, newest first; ``?limit=`` from 1 to 200 (larger is cut to 200).

    A malformed ``limit`` or ``cursor`` is a 400 naming the parameter, not a silent
    fallback to the default page (DRF's behaviour) or a 404 for the cursor.
    """

    page_size = 50
    max_page_size = 200
    page_size_query_param = "limit"
    ordering = "-pk"

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise InvalidInput(
                f"limit must be a whole number from 1 to {self.max_page_size}",
                details={"parameter": self.page_size_query_param},
            )
        return min(value, self.max_page_size)

    def decode_cursor(self, request: Request) -> Any:
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise InvalidInput(
                "cursor is not one this API returned",
                details={"parameter": self.cursor_query_param},
            ) from None


def paginated_response(
    *,
    queryset: QuerySet[Any],
    serializer_class: type[serializers.Serializer],
    request: Request,
    view: Any,
) -> Response:
    paginator = CursorPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


@cache  # one class per serializer: the schema must not see two components of one name
def page_serializer(serializer_class: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The schema of one page of ``serializer_class``, for ``extend_schema(responses=...)``."""
    name = serializer_class.__name__.removesuffix("Serializer")
    return type(
        f"{name}PageSerializer",
        (serializers.Serializer,),
        {
            "next": serializers.URLField(allow_null=True, help_text="the next page, or null"),
            "previous": serializers.URLField(allow_null=True, help_text="the previous page"),
            "results": serializer_class(many=True),
        },
    )
