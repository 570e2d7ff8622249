"""Every field of an offer, given a bad value, is refused naming that field, and
nothing is written: no offer, no active period, no event."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import InvalidInput, NotFound
from core.models import Event
from providers import services
from providers.models import Offer, OfferActivePeriod

pytestmark = pytest.mark.django_db

OFFERS = "/api/v1/provider/offers/"


@pytest.fixture
def node(cast, make_node):
    return make_node(cast.provider_a, count=8)


def _nothing_written() -> None:
    assert not Offer.objects.exists()
    assert not OfferActivePeriod.objects.exists()
    assert not Event.objects.filter(stream_type="offer").exists()


def _good(node) -> dict:
    return {
        "node_id": node.pk,
        "gpu_model": "h100-sxm-80gb",
        "gpu_count": 4,
        "price_per_gpu_hour_micros": 2_500_000,
        "kind": "on_demand",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"node_id": "seven"}, "node_id"),
        ({"node_id": 0}, "node_id"),
        ({"gpu_model": ""}, "gpu_model"),
        ({"gpu_count": -1}, "gpu_count"),
        ({"gpu_count": 65}, "gpu_count"),
        ({"price_per_gpu_hour_micros": 10**12 + 1}, "price_per_gpu_hour_micros"),
        ({"window_start": "monday"}, "window_start"),
        ({"window_end": "2020-01-01T00:00:00Z"}, "window_end"),
        ({"min_lease_seconds": 59}, "min_lease_seconds"),
        ({"max_lease_seconds": 59}, "max_lease_seconds"),
        ({"kind": "interruptible", "preemption_grace_seconds": -1}, "preemption_grace_seconds"),
        ({"kind": "interruptible", "preemption_grace_seconds": 86_401}, "preemption_grace_seconds"),
        (
            {"window_end": (timezone.now() + timedelta(minutes=30)).isoformat()},
            "min_lease_seconds",
        ),
    ],
)
def test_a_bad_field_is_a_400_naming_it_and_nothing_is_written(cast, node, change, field):
    answer = cast.client(cast.provider_a).post(OFFERS, {**_good(node), **change}, format="json")

    assert answer.status_code == 400, answer.json()
    error = answer.json()["error"]
    assert list(error["details"]["fields"]) == [field]
    assert field in error["message"]
    _nothing_written()


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"node_id": 0}, "node_id", "must be >= 1"),
        ({"gpu_model": ""}, "gpu_model", "must have >= 1 characters"),
        ({"gpu_model": "h900"}, "gpu_model", "unknown GPU model 'h900'; see /gpu-models"),
        ({"gpu_count": 0}, "gpu_count", "must be >= 1"),
        ({"gpu_count": "4"}, "gpu_count", "must be int, not str"),
        ({"price_per_gpu_hour_micros": 0}, "price_per_gpu_hour_micros", "must be >= 1"),
        ({"kind": "spot"}, "kind", "must be one of 'on_demand', 'interruptible'"),
        ({"window_start": "naive"}, "window_start", "must carry a time zone"),
        ({"window_end": "naive"}, "window_end", "must carry a time zone"),
        ({"window_start": "long ago", "window_end": "past"}, "window_end", "is in the past"),
        (
            {"window_start": "later", "window_end": "soon"},
            "window_end",
            "must be after window_start",
        ),
        ({"min_lease_seconds": 10**8 + 1}, "min_lease_seconds", "must be <= 100000000"),
        (
            {"min_lease_seconds": 7200, "max_lease_seconds": 3600},
            "max_lease_seconds",
            "must be at least min_lease_seconds",
        ),
        (
            {"kind": "interruptible"},
            "preemption_grace_seconds",
            "is required for interruptible offers (seconds of notice)",
        ),
        (
            {"preemption_grace_seconds": 30},
            "preemption_grace_seconds",
            "applies only to interruptible offers",
        ),
        ({"gpu_count": 9}, "gpu_count", "node node-1 has 8 H100 SXM 80GB GPUs, not 9"),
    ],
)
def test_offer_create_names_the_field_of_each_bad_value(cast, node, change, field, message):
    now = timezone.now()
    times = {
        "naive": now.replace(tzinfo=None) + timedelta(days=1),
        "long ago": now - timedelta(days=2),
        "past": now - timedelta(hours=1),
        "soon": now + timedelta(hours=2),
        "later": now + timedelta(hours=3),
    }
    change = {k: times.get(v, v) if isinstance(v, str) else v for k, v in change.items()}

    with pytest.raises(InvalidInput) as caught:
        services.offer_create(organization=cast.provider_a, **{**_good(node), **change})

    assert caught.value.message == f"{field}: {message}"
    assert caught.value.details == {"fields": {field: [message]}}
    _nothing_written()


def test_another_organizations_node_is_not_found(cast, node):
    with pytest.raises(NotFound) as caught:
        services.offer_create(organization=cast.provider_b, **_good(node))

    assert list(caught.value.details["fields"]) == ["node_id"]
    _nothing_written()
