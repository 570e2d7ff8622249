"""Every field of an order, given a bad value, is refused naming that field, and
nothing is written: no order, no event, no reservation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import InvalidInput
from core.models import Event
from ledger.models import Hold
from marketplace import services
from marketplace.models import Order
from marketplace.services import OrderSpec
from tests.marketplace.conftest import available

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {
    "gpus_per_node": 1,
    "gpu_models": ["h100-sxm-80gb"],
    "limit_price_per_gpu_hour": "3.00",
    "duration_seconds": 3600,
}
GOOD = {
    "gpus_per_node": 1,
    "gpu_models": ["h100-sxm-80gb"],
    "limit_price_per_gpu_hour_micros": 3_000_000,
    "duration_seconds": 3600,
}


def _nothing_written(buyer, before: int) -> None:
    assert not Order.objects.exists()
    assert not Event.objects.filter(stream_type="order").exists()
    assert not Hold.objects.exists()
    assert available(buyer) == before


def _past() -> str:
    return (timezone.now() - timedelta(hours=1)).isoformat()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"gpus_per_node": 0}, "gpus_per_node"),
        ({"gpus_per_node": 65}, "gpus_per_node"),
        ({"gpus_per_node": "two"}, "gpus_per_node"),
        ({"node_count": 0}, "node_count"),
        ({"gpu_models": ["h900"]}, "gpu_models[0]"),
        ({"gpu_models": []}, "gpu_models"),
        ({"gpu_model_at_least": "h900"}, "gpu_model_at_least"),
        ({"limit_price_per_gpu_hour": "abc"}, "limit_price_per_gpu_hour"),
        ({"limit_price_per_gpu_hour": "0"}, "limit_price_per_gpu_hour"),
        ({"limit_price_per_gpu_hour": "1000000.01"}, "limit_price_per_gpu_hour"),
        ({"kind": "spot"}, "kind"),
        ({"time_in_force": "gtc"}, "time_in_force"),
        ({"min_gpu_memory_gib": -1}, "min_gpu_memory_gib"),
        ({"interconnect": "token-ring"}, "interconnect"),
        ({"regions": ["r" * 65]}, "regions[0]"),
        ({"countries": ["USA"]}, "countries[0]"),
        ({"min_reliability": 1.5}, "min_reliability"),
        ({"duration_seconds": 1}, "duration_seconds"),
        ({"earliest_start": "tomorrow"}, "earliest_start"),
        ({"deadline": "2020-01-01T00:00:00Z"}, "deadline"),
    ],
)
def test_a_bad_field_is_a_400_naming_it_and_nothing_is_written(cast, buyer, change, field):
    before = available(buyer)

    answer = cast.client(buyer).post(
        "/api/v1/orders/", {**BODY, **change}, format="json", HTTP_IDEMPOTENCY_KEY="bad"
    )

    assert answer.status_code == 400, answer.json()
    error = answer.json()["error"]
    assert list(error["details"]["fields"]) == [field]
    assert field in error["message"]
    _nothing_written(buyer, before)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"gpus_per_node": 0}, "gpus_per_node", "must be >= 1"),
        ({"gpus_per_node": 65}, "gpus_per_node", "must be <= 64"),
        ({"gpus_per_node": True}, "gpus_per_node", "must be int, not bool"),
        ({"limit_price_per_gpu_hour_micros": 0}, "limit_price_per_gpu_hour_micros", "must be >= 1"),
        (
            {"limit_price_per_gpu_hour_micros": 10**13},
            "limit_price_per_gpu_hour_micros",
            "must be <= 1000000000000",
        ),
        ({"gpu_models": ["h900"]}, "gpu_models[0]", "unknown GPU model 'h900'"),
        ({"gpu_models": [""]}, "gpu_models[0]", "must have >= 1 characters"),
        ({"gpu_model_at_least": "h900"}, "gpu_model_at_least", "unknown GPU model 'h900'"),
        ({"node_count": 65}, "node_count", "must be <= 64"),
        ({"kind": "spot"}, "kind", "must be one of 'on_demand', 'interruptible'"),
        ({"time_in_force": "gtc"}, "time_in_force", "must be one of 'ioc', 'standing'"),
        ({"min_gpu_memory_gib": 10_001}, "min_gpu_memory_gib", "must be <= 10000"),
        ({"interconnect": "token-ring"}, "interconnect", "must be one of '', 'nvlink', 'pcie'"),
        ({"regions": ["r"] * 33}, "regions", "must have <= 32 items"),
        ({"countries": ["U1"]}, "countries[0]", "must match ^[A-Za-z]{2}$"),
        ({"min_reliability": -0.1}, "min_reliability", "must be >= 0.0"),
        ({"duration_seconds": 59}, "duration_seconds", "must be >= 60"),
        ({"earliest_start": "naive"}, "earliest_start", "must carry a time zone"),
        ({"deadline": "naive"}, "deadline", "must carry a time zone"),
        ({"deadline": "past"}, "deadline", "must be after earliest_start and in the future"),
        ({"deadline": "soon"}, "deadline", "leaves less than duration_seconds after the start"),
        ({"deadline": "far"}, "deadline", "is further away than orders may wait"),
        (
            {"gpus_per_node": 64, "node_count": 64, "limit_price_per_gpu_hour_micros": 10**12},
            "limit_price_per_gpu_hour_micros",
            "makes the order's cost too large",
        ),
    ],
)
def test_order_place_names_the_field_of_each_bad_value(cast, buyer, change, field, message):
    now = timezone.now()
    times = {
        "naive": now.replace(tzinfo=None),
        "past": now - timedelta(hours=1),
        "soon": now + timedelta(minutes=30),
        "far": now + timedelta(days=30),
    }
    change = {k: times.get(v, v) if isinstance(v, str) else v for k, v in change.items()}
    before = available(buyer)

    with pytest.raises(InvalidInput) as caught:
        services.order_place(organization=buyer, spec=OrderSpec(**{**GOOD, **change}), now=now)

    assert caught.value.message == f"{field}: {message}"
    assert caught.value.details == {"fields": {field: [message]}}
    _nothing_written(buyer, before)


@pytest.mark.parametrize(
    ("workload", "field"),
    [
        ({"workload_kind": "mining"}, "workload_kind"),
        ({"workload_kind": "fine_tune", "workload_id": ""}, "workload_id"),
        ({"workload_kind": "fine_tune", "workload_id": "x" * 201}, "workload_id"),
    ],
)
def test_a_bad_workload_names_its_field(cast, buyer, workload, field):
    before = available(buyer)

    with pytest.raises(InvalidInput) as caught:
        services.order_place(organization=buyer, spec=OrderSpec(**GOOD), **workload)

    assert list(caught.value.details["fields"]) == [field]
    _nothing_written(buyer, before)
