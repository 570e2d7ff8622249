"""A buyer's runs on a raw lease: /api/v1/leases/{id}/runs…"""

from __future__ import annotations

from django.urls import path

from core.routing import by_method
from marketplace.assignments import apis

urlpatterns = [
    path(
        "leases/<id:lease_id>/runs",
        by_method(get=apis.LeaseRunListApi, post=apis.LeaseRunCreateApi),
        name="lease-runs",
    ),
    path(
        "leases/<id:lease_id>/runs/<id:run_id>",
        apis.LeaseRunDetailApi.as_view(),
        name="lease-run-detail",
    ),
    path(
        "leases/<id:lease_id>/runs/<id:run_id>/logs",
        apis.LeaseRunLogsApi.as_view(),
        name="lease-run-logs",
    ),
    path(
        "leases/<id:lease_id>/runs/<id:run_id>/cancel",
        apis.LeaseRunCancelApi.as_view(),
        name="lease-run-cancel",
    ),
]
