from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import yaml
from django.core.management import call_command

from providers import selectors, services
from providers.models import Offer, OfferActivePeriod
from tests.providers.conftest import beat, samples

pytestmark = pytest.mark.django_db

P = "/api/v1/provider"


def test_nodes_show_gpus_with_live_telemetry_and_health(cast, make_node):
    node = make_node(cast.provider_a, count=2)
    beat(node, samples(node, utilization_pct=42, temperature_c=61, power_mw=350_000))
    portal = cast.client(cast.provider_a)

    [listed] = portal.get(f"{P}/nodes/").json()["results"]

    assert listed["health"] == "healthy"
    assert listed["site"]["region"] == "us-east"
    assert [g["model"] for g in listed["gpus"]] == ["h100-sxm-80gb"] * 2
    telemetry = listed["gpus"][0]["telemetry"]
    assert (telemetry["utilization_pct"], telemetry["temperature_c"], telemetry["power_mw"]) == (
        42,
        61,
        350_000,
    )


def test_a_node_registered_without_heartbeats_shows_no_telemetry(cast, make_node):
    node = make_node(cast.provider_a, count=1)

    body = cast.client(cast.provider_a).get(f"{P}/nodes/{node.pk}").json()

    assert body["health"] == "unknown" and body["gpus"][0]["telemetry"] is None


def test_telemetry_history_is_per_gpu_per_minute(cast, make_node):
    node = make_node(cast.provider_a, count=1)
    beat(node, samples(node, utilization_pct=20, power_mw=100))
    beat(node, samples(node, utilization_pct=40, power_mw=300))
    portal = cast.client(cast.provider_a)

    rows = portal.get(f"{P}/nodes/{node.pk}/telemetry?minutes=5").json()

    assert len(rows) in (1, 2)  # two heartbeats may straddle a minute
    if len(rows) == 1:
        assert (rows[0]["samples"], rows[0]["utilization_avg_pct"], rows[0]["power_avg_mw"]) == (
            2,
            30.0,
            200,
        )
    assert portal.get(f"{P}/nodes/{node.pk}/telemetry?minutes=0").status_code == 400


def test_listed_gpu_hours_per_day(cast, make_node):
    # given: a 4-GPU offer active from 18:00 on day 1, paused 02:00-04:00 on day 2,
    # withdrawn at 12:00 on day 2
    node = make_node(cast.provider_a)
    offer = services.offer_create(
        organization=cast.provider_a,
        node_id=node.pk,
        gpu_model="h100-sxm-80gb",
        gpu_count=4,
        price_per_gpu_hour_micros=1,
        kind="on_demand",
        window_start=datetime(2026, 1, 1, tzinfo=UTC),
    )
    day1 = datetime(2026, 3, 1, tzinfo=UTC)
    OfferActivePeriod.objects.filter(offer=offer).update(
        started_at=day1 + timedelta(hours=18), ended_at=day1 + timedelta(hours=26)
    )
    OfferActivePeriod.objects.create(
        offer=offer, started_at=day1 + timedelta(hours=28), ended_at=day1 + timedelta(hours=36)
    )

    days = selectors.listed_gpu_seconds_by_day(
        organization=cast.provider_a, days=3, now=day1 + timedelta(days=2, hours=1)
    )

    # by hand: day 1: 6 h x 4 GPUs = 24; day 2: (2 h + 8 h) x 4 = 40; day 3: 0
    assert [(d.day.day, d.gpu_hours_listed) for d in days] == [(1, 24.0), (2, 40.0), (3, 0.0)]


def test_the_utilization_endpoint_checks_its_parameter(cast):
    portal = cast.client(cast.provider_a)

    assert len(portal.get(f"{P}/utilization?days=7").json()["days"]) == 7
    assert portal.get(f"{P}/utilization?days=500").status_code == 400


def test_the_gpu_catalog_is_served(cast):
    body = cast.client(cast.provider_a).get(f"{P}/gpu-models").json()

    h100 = next(m for m in body if m["slug"] == "h100-sxm-80gb")
    assert (h100["memory_gib"], h100["interconnect"]) == (80, "nvlink")


def test_sites_are_created_once_per_name(cast):
    portal = cast.client(cast.provider_a)
    body = {"name": "Hall B", "region": "eu-west", "country": "ie"}

    first = portal.post(f"{P}/sites/", body, format="json")
    again = portal.post(f"{P}/sites/", body, format="json")
    bad = portal.post(f"{P}/sites/", {**body, "name": "x", "country": "IRL"}, format="json")

    assert first.status_code == 201 and first.json()["country"] == "IE"
    assert list(again.json()["error"]["details"]["fields"]) == ["name"]
    assert list(bad.json()["error"]["details"]["fields"]) == ["country"]


def test_heartbeat_input_errors_name_the_place(cast, make_node):
    node = make_node(cast.provider_a, count=2)
    agent = cast.agent(cast.provider_a, node=node)
    url = f"/api/v1/agent/nodes/{node.pk}/heartbeat"
    good = samples(node, utilization_pct=5)

    for index, field, value in [
        (1, "utilization_pct", 101),
        (0, "power_mw", "lots"),
        (1, "temperature_c", True),
        (0, "xid_events", ["79"]),
    ]:
        bad = [dict(s) for s in good]
        bad[index][field] = value
        response = agent.post(url, {"gpus": bad}, format="json")
        assert response.status_code == 400
        assert list(response.json()["error"]["details"]["fields"]) == [f"gpus[{index}].{field}"]


def test_a_heartbeat_answers_protocol_errors_in_the_api_shape(cast, make_node):
    node = make_node(cast.provider_a, count=2)
    agent = cast.agent(cast.provider_a, node=node)
    url = f"/api/v1/agent/nodes/{node.pk}/heartbeat"
    twice = samples(node, utilization_pct=5)[:1] * 2

    repeated = agent.post(url, {"gpus": twice}, format="json")
    malformed = agent.post(url, b"{not json", content_type="application/json")
    as_form = agent.post(url, {"gpus": "x"})
    listed = agent.get(url)

    assert repeated.status_code == 400
    assert list(repeated.json()["error"]["details"]["fields"]) == ["gpus[1].uuid"]
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (400, "parse_error")
    assert (as_form.status_code, as_form.json()["error"]["code"]) == (
        415,
        "unsupported_media_type",
    )
    assert (listed.status_code, listed.json()["error"]["code"]) == (405, "method_not_allowed")
    # and a good one is answered as the schema says
    accepted = agent.post(url, {"gpus": samples(node, utilization_pct=5)}, format="json")
    assert accepted.status_code == 200
    assert accepted.json() == {
        "health": "healthy",
        "health_reason": "",
        "heartbeat_interval_seconds": 15,
        "unknown_gpu_uuids": [],
    }
    assert accepted["Content-Type"] == "application/json"


def test_the_demo_loads_twice_without_doubling_anything(cast):
    from providers import demo

    demo.load(provider=cast.provider_a)
    demo.load(provider=cast.provider_a)

    offers = Offer.objects.filter(organization=cast.provider_a)
    assert sorted(offers.values_list("kind", flat=True)) == ["interruptible", "on_demand"]
    [node] = selectors.nodes_for_org(organization=cast.provider_a)
    assert node.health == "healthy" and len(node.present_gpus) == 8
    assert selectors.offers_listed(gpu_model_at_least="h100-sxm-80gb").count() == 2


def test_the_schema_documents_the_provider_api_without_warnings():
    out = StringIO()

    call_command(
        "spectacular",
        "--validate",
        "--fail-on-warn",
        "--urlconf",
        "tests.providers.schema_urls",
        stdout=out,
    )

    paths = yaml.safe_load(out.getvalue())["paths"]
    assert set(paths["/api/v1/provider/offers/"]) == {"get", "post"}
    assert "post" in paths["/api/v1/agent/nodes/{node_id}/heartbeat"]
    assert "post" in paths["/api/v1/provider/offers/{offer_id}/withdraw"]


@pytest.mark.parametrize(
    "url",
    [
        "/admin/providers/node/",
        "/admin/providers/node/{node}/change/",
        "/admin/providers/offer/",
        "/admin/providers/site/",
        "/admin/providers/agentkey/",
    ],
)
def test_admin_pages_render(cast, make_node, admin_client, url):
    node = make_node(cast.provider_a)

    assert admin_client.get(url.format(node=node.pk)).status_code == 200


def test_the_node_monitor_command_sweeps_once(cast, make_node, settings):
    from core.models import Event
    from providers.models import Node

    node = make_node(cast.provider_a)
    Node.objects.filter(pk=node.pk).update(registered_at=node.registered_at - timedelta(hours=1))
    out = StringIO()

    call_command("run_node_monitor", "--once", stdout=out)
    call_command("run_node_monitor", "--once", stdout=out)

    node.refresh_from_db()
    assert node.health == "unhealthy"
    assert Event.objects.filter(stream_id=f"node-{node.pk}", type="NodeHealthChanged").count() == 1
    assert node.reliability_score == 0.0  # refreshed: an hour without a heartbeat
