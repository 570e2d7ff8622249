"""What the provider endpoints share: the schema's tags, bounds and query parameters."""

from __future__ import annotations

from rest_framework.request import Request

from core.converters import query_int
from providers import services

TAG_PORTAL = "provider portal"
TAG_AGENT = "provider agent"
MAX_GPUS_PER_NODE = services.MAX_GPUS_PER_NODE


def int_param(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    return query_int(request, name, low=low, high=high, default=default)
