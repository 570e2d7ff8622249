from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import Event
from providers.models import Offer

pytestmark = pytest.mark.django_db

OFFERS = "/api/v1/provider/offers/"


@pytest.fixture
def portal(cast):
    return cast.client(cast.provider_a)


@pytest.fixture
def node(cast, make_node):
    return make_node(cast.provider_a, count=8)


def _body(node, **changes):
    return {
        "node_id": node.pk,
        "gpu_model": "h100-sxm-80gb",
        "gpu_count": 4,
        "price_per_gpu_hour_micros": 2_500_000,
        "kind": "on_demand",
        **changes,
    }


def _offer_events(offer_id: int) -> list[tuple[str, dict]]:
    return [
        (e.type, e.payload)
        for e in Event.objects.filter(stream_id=f"offer-{offer_id}").order_by("version")
    ]


def test_an_offer_is_listed_with_an_event(portal, node):
    response = portal.post(OFFERS, _body(node), format="json")

    assert response.status_code == 201, response.json()
    offer = response.json()
    assert (offer["status"], offer["region"], offer["currency"]) == ("active", "us-east", "USD")
    assert offer["window_end"] is None  # open-ended
    [(kind, payload)] = _offer_events(offer["id"])
    assert kind == "OfferListed"
    assert payload["price_per_gpu_hour_micros"] == 2_500_000
    assert payload["gpu_count"] == 4 and payload["node_id"] == node.pk
    assert offer["price_per_a100_hour_micros"] == 788_644  # 2,500,000 x 100 / 317


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"gpu_model": "h900-imaginary"}, "gpu_model"),
        ({"gpu_model": "a100-sxm-80gb"}, "gpu_model"),  # known, but not on this node
        ({"gpu_count": 9}, "gpu_count"),
        ({"gpu_count": 0}, "gpu_count"),
        ({"price_per_gpu_hour_micros": 0}, "price_per_gpu_hour_micros"),
        ({"price_per_gpu_hour_micros": -5}, "price_per_gpu_hour_micros"),
        ({"price_per_gpu_hour_micros": "2.50"}, "price_per_gpu_hour_micros"),
        (
            {"window_start": "2030-01-02T00:00:00Z", "window_end": "2030-01-01T00:00:00Z"},
            "window_end",
        ),
        (
            {"window_start": "2030-01-01T00:00:00Z", "window_end": "2030-01-01T00:00:00Z"},
            "window_end",
        ),
        ({"min_lease_seconds": 7200, "max_lease_seconds": 3600}, "max_lease_seconds"),
        ({"kind": "interruptible"}, "preemption_grace_seconds"),
        ({"kind": "on_demand", "preemption_grace_seconds": 30}, "preemption_grace_seconds"),
        ({"kind": "spot"}, "kind"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(portal, node, changes, field):
    response = portal.post(OFFERS, _body(node, **changes), format="json")

    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert list(error["details"]["fields"]) == [field]
    assert field in error["message"]
    assert not Offer.objects.exists()


def test_overlapping_offers_for_the_same_gpus_are_refused(portal, node):
    start = timezone.now() + timedelta(days=1)
    first = portal.post(
        OFFERS,
        _body(
            node,
            gpu_count=6,
            window_start=start.isoformat(),
            window_end=(start + timedelta(days=7)).isoformat(),
        ),
        format="json",
    )
    assert first.status_code == 201

    # 6 + 4 > 8 GPUs over an overlapping window
    overlapping = portal.post(
        OFFERS,
        _body(node, gpu_count=4, window_start=(start + timedelta(days=6)).isoformat()),
        format="json",
    )
    # the remaining 2 GPUs may be listed, and so may all 8 once the first window ends
    rest = portal.post(OFFERS, _body(node, gpu_count=2), format="json")
    after = portal.post(
        OFFERS,
        _body(node, gpu_count=8, window_start=(start + timedelta(days=7)).isoformat()),
        format="json",
    )

    assert overlapping.status_code == 400
    error = overlapping.json()["error"]
    assert list(error["details"]["fields"]) == ["window_start"]
    assert error["details"]["conflicting_offer_ids"] == [first.json()["id"]]
    assert (rest.status_code, after.status_code) == (201, 400)  # `rest` now overlaps `after`


def test_a_withdrawn_offer_frees_its_gpus(portal, node):
    first = portal.post(OFFERS, _body(node, gpu_count=8), format="json").json()
    portal.post(f"{OFFERS}{first['id']}/withdraw", {}, format="json")

    again = portal.post(OFFERS, _body(node, gpu_count=8), format="json")

    assert again.status_code == 201


def test_pause_resume_reprice_withdraw_each_emit_one_event(portal, node):
    offer = portal.post(OFFERS, _body(node), format="json").json()
    url = f"{OFFERS}{offer['id']}"

    assert portal.post(f"{url}/pause").json()["status"] == "paused"
    assert portal.post(f"{url}/pause").status_code == 200  # again: no-op, no event
    assert portal.post(f"{url}/resume").json()["status"] == "active"
    repriced = portal.post(
        f"{url}/reprice", {"price_per_gpu_hour_micros": 1_900_000}, format="json"
    )
    assert repriced.json()["price_per_gpu_hour_micros"] == 1_900_000
    withdrawn = portal.post(f"{url}/withdraw", {}, format="json").json()

    assert withdrawn["status"] == "withdrawn" and withdrawn["forced_end_at"] is None
    events = _offer_events(offer["id"])
    assert [kind for kind, _ in events] == [
        "OfferListed",
        "OfferPaused",
        "OfferResumed",
        "OfferRepriced",
        "OfferWithdrawn",
    ]
    assert events[3][1]["previous_price_per_gpu_hour_micros"] == 2_500_000
    assert events[3][1]["applies_to"] == "new_leases"
    assert events[4][1]["forced"] is False and events[4][1]["forced_end_at"] is None
    # a withdrawn offer cannot come back or change price
    assert portal.post(f"{url}/resume").status_code == 409
    reprice = portal.post(f"{url}/reprice", {"price_per_gpu_hour_micros": 1}, format="json")
    assert reprice.status_code == 409


def test_a_forced_withdrawal_records_when_running_leases_end(portal, node):
    offer = portal.post(OFFERS, _body(node), format="json").json()
    url = f"{OFFERS}{offer['id']}/withdraw"
    portal.post(url, {}, format="json")  # first without force: leases run on
    before = timezone.now()

    forced = portal.post(url, {"force": True}, format="json").json()

    assert forced["forced_end_at"] is not None
    kind, payload = _offer_events(offer["id"])[-1]
    assert kind == "OfferWithdrawn" and payload["forced"] is True
    assert payload["forced_end_at"] == forced["forced_end_at"].replace("Z", "+00:00")
    assert payload["forced_end_at"] >= before.isoformat()
    # forcing again changes nothing
    portal.post(url, {"force": True}, format="json")
    assert len(_offer_events(offer["id"])) == 3


def test_reprice_rejects_a_price_that_is_not_positive(portal, node):
    offer = portal.post(OFFERS, _body(node), format="json").json()

    response = portal.post(
        f"{OFFERS}{offer['id']}/reprice", {"price_per_gpu_hour_micros": 0}, format="json"
    )

    assert response.status_code == 400
    assert list(response.json()["error"]["details"]["fields"]) == ["price_per_gpu_hour_micros"]


def test_a_node_without_a_site_cannot_list(cast, portal):
    from providers import services
    from tests.providers.conftest import inventory

    node = services.node_register(
        organization=cast.provider_a, hostname="lonely", inventory=inventory(2, prefix="GPU-lonely")
    )

    response = portal.post(OFFERS, _body(node, gpu_count=1), format="json")

    assert response.status_code == 400
    assert list(response.json()["error"]["details"]["fields"]) == ["node_id"]


def test_offer_create_honours_idempotency_keys(portal, node):
    headers = {"HTTP_IDEMPOTENCY_KEY": "offer-1"}
    first = portal.post(OFFERS, _body(node), format="json", **headers)
    second = portal.post(OFFERS, _body(node), format="json", **headers)

    assert first.status_code == second.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert Offer.objects.count() == 1
