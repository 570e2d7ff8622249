from __future__ import annotations

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest

PAGE_SIZE = 25


def page_of(request: HttpRequest, rows: QuerySet | list, *, per_page: int = PAGE_SIZE) -> Page:
    """The page the ``page`` query parameter names; a page past the end, or one that
    is not a number, shows the last or the first (a list never answers an error)."""
    return Paginator(rows, per_page).get_page(request.GET.get("page"))
