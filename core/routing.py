"""One URL served by one APIView per HTTP method.

REST puts list and create on one URL (``GET``/``POST /api/v1/api-keys/``), while the
house style wants one view per operation, each with its own permissions, input and
output. Django routes by path only, so ``by_method`` sends each method to its view::

    path("api-keys/", by_method(get=ApiKeyListApi, post=ApiKeyCreateApi))

drf-spectacular documents each method from its own view through the
``expand_method_routes`` preprocessing hook (see SPECTACULAR_SETTINGS).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.views import APIView


def by_method(**views: type[APIView]) -> Callable[..., HttpResponse]:
    callbacks = {method.upper(): view.as_view() for method, view in views.items()}
    allowed = ", ".join([*callbacks, "OPTIONS"])
    fallback = next(iter(callbacks.values()))

    # CSRF is DRF's business (SessionAuthentication enforces it; API keys need none),
    # as it is for every APIView.as_view().
    @csrf_exempt
    def dispatch(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        method = "GET" if request.method == "HEAD" else request.method
        callback = callbacks.get(method or "")
        if callback is not None:
            return callback(request, *args, **kwargs)
        # Another method: let a DRF view answer (405, or OPTIONS) in the API's shape,
        # then tell the truth about what this URL allows.
        response = fallback(request, *args, **kwargs)
        if response.has_header("Allow"):
            response["Allow"] = allowed
        return response

    # What drf-spectacular's endpoint enumerator looks for on a callback: a view class
    # that allows these methods. The hook below swaps in the real view per method.
    dispatch.cls = type(  # type: ignore[attr-defined]
        "MethodRoute", (APIView,), {m.lower(): _placeholder for m in callbacks}
    )
    dispatch.initkwargs = {}  # type: ignore[attr-defined]
    dispatch.method_views = callbacks  # type: ignore[attr-defined]
    return dispatch


def _placeholder(*args: Any, **kwargs: Any) -> None:  # never called: see by_method
    raise NotImplementedError


def expand_method_routes(endpoints: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """drf-spectacular preprocessing hook: document each method from its own view."""
    expanded = []
    for path, path_regex, method, callback in endpoints:
        views = getattr(callback, "method_views", None)
        expanded.append((path, path_regex, method, views[method] if views else callback))
    return expanded
