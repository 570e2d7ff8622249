"""The order book API, tried by the right and the wrong callers."""

from __future__ import annotations

import pytest

from marketplace import services
from marketplace.models import Lease, Order
from tests.marketplace.conftest import fund, healthy_node, offer

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {
    "gpus_per_node": 1,
    "gpu_models": ["h100-sxm-80gb"],
    "limit_price_per_gpu_hour": "3.00",
    "duration_seconds": 3600,
}


def place(client, body=None, key="k-1"):
    return client.post("/api/v1/orders/", body or BODY, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_a_buyer_places_an_order_gets_a_lease_and_sees_it(cast, buyer):
    node = healthy_node(cast.provider_a, "n1")
    offer(node, price=2_000_000)
    client = cast.client(buyer)

    placed = place(client)
    assert placed.status_code == 201, placed.json()
    order_id = placed.json()["id"]
    assert placed.json()["reserved_micros"] == 3_300_000
    again = place(client)  # the same key and body replays, and places nothing
    assert again.json()["id"] == order_id and again["Idempotent-Replayed"] == "true"
    assert Order.objects.filter(organization=buyer).count() == 1

    services.matching_round()

    detail = client.get(f"/api/v1/orders/{order_id}").json()
    assert detail["state"] == "filled" and len(detail["leases"]) == 1
    lease_id = detail["leases"][0]["id"]
    lease = client.get(f"/api/v1/leases/{lease_id}").json()
    assert lease["state"] == "active" and len(lease["gpu_uuids"]) == 1
    assert client.get("/api/v1/leases/").json()["results"][0]["id"] == lease_id
    provider_view = cast.client(cast.provider_a).get("/api/v1/provider-leases/").json()
    assert [row["id"] for row in provider_view["results"]] == [lease_id]
    assert "order" not in provider_view["results"][0]

    cancelled = client.post(f"/api/v1/orders/{order_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert Lease.objects.get(pk=lease_id).state == "ended"


def test_the_wrong_callers_get_404_403_401(cast, buyer):
    node = healthy_node(cast.provider_a, "n1")
    offer(node, price=2_000_000)
    order = place(cast.client(buyer)).json()["id"]
    services.matching_round()
    lease = Lease.objects.get(order_id=order).pk

    other = cast.client(cast.buyer_b)
    assert other.get(f"/api/v1/orders/{order}").status_code == 404
    assert other.post(f"/api/v1/orders/{order}/cancel").status_code == 404
    assert other.get(f"/api/v1/leases/{lease}").status_code == 404
    assert other.get("/api/v1/leases/").json()["results"] == []
    provider = cast.client(cast.provider_a)
    assert provider.get("/api/v1/orders/").status_code == 403
    assert place(provider).status_code == 403
    assert provider.get(f"/api/v1/leases/{lease}").status_code == 403
    assert cast.client(cast.buyer_b).get("/api/v1/provider-leases/").status_code == 403
    assert cast.client(cast.provider_b).get("/api/v1/provider-leases/").json()["results"] == []
    assert place(cast.client(buyer, role="finance"), key="f").status_code == 403
    for path in ("/api/v1/orders/", "/api/v1/leases/", "/api/v1/market/"):
        assert cast.anonymous.get(path).status_code == 401


def test_insufficient_credit_is_a_402_with_the_amount_missing(cast):
    fund(cast.buyer_b, 1_000_000)
    answer = place(cast.client(cast.buyer_b))
    assert answer.status_code == 402
    details = answer.json()["error"]["details"]
    assert details["missing_micros"] == 2_300_000 and details["missing"] == "2.30"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"gpus_per_node": 0}, "gpus_per_node"),
        ({"gpu_models": ["nope"]}, "gpu_models[0]"),
        ({"limit_price_per_gpu_hour": "abc"}, "limit_price_per_gpu_hour"),
        ({"kind": "spot"}, "kind"),
        ({"duration_seconds": 1}, "duration_seconds"),
        ({"countries": ["USA"]}, "countries[0]"),
        ({"deadline": "2020-01-01T00:00:00Z"}, "deadline"),
    ],
)
def test_malformed_orders_are_400s_naming_the_field(cast, buyer, change, field):
    answer = place(cast.client(buyer), {**BODY, **change}, key=f"bad-{field}")
    assert answer.status_code == 400, answer.json()
    assert field in answer.json()["error"]["details"]["fields"]


def test_the_market_shows_price_ranges_without_naming_providers(cast, buyer):
    offer(healthy_node(cast.provider_a, "a1"), price=2_000_000)
    offer(healthy_node(cast.provider_b, "b1"), price=2_600_000)
    lines = cast.client(buyer).get("/api/v1/market/").json()
    [line] = [row for row in lines if row["gpu_model"] == "h100-sxm-80gb"]
    assert (line["price_min_micros"], line["price_max_micros"]) == (2_000_000, 2_600_000)
    assert line["providers"] == 2 and line["gpus_free"] == 16
    assert "Provider" not in str(lines)
