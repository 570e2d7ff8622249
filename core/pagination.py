from __future__ import annotations

from rest_framework import pagination


class CursorPagination(pagination.CursorPagination):
    """Stable cursor pages; ``?limit=`` up to 200."""

    page_size = 50
    max_page_size = 200
    page_size_query_param = "limit"
    ordering = "-pk"
