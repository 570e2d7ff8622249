"""The provider portal's pages through Django's client: who may open and change what
(another provider's ids answer 404, members read but do not write), forms whose
errors sit beside their fields, the offer's lifecycle, agent keys shown once, a node's
telemetry and reliability with its inputs, and query counts that do not grow with
the rows behind a page."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape as html_unescape

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core.models import ApiKey
from marketplace.models import Lease, Order
from providers import demo as supply_demo
from providers import services as supply
from providers.models import AgentKey, Gpu, Node, Offer, Site

pytestmark = pytest.mark.django_db

READ_PAGES = [
    "portal:provider-sites",
    "portal:provider-nodes",
    "portal:provider-offers",
    "portal:provider-leases",
    "portal:provider-agent-keys",
]


def signed_in(who) -> Client:
    client = Client()
    client.force_login(who.user)
    return client


def _field_error(html: str, field: str) -> str:
    """The error text Django renders inside ``field``'s own group, linked to its input."""
    found = re.search(rf'id="id_{field}_error"[^>]*>(.*?)</ul>', html, re.S)
    assert found, f"no error beside {field}"
    return html_unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip()


@pytest.fixture
def provider(person):
    who = person("provider")
    supply_demo.load(provider=who.organization)  # a site, a node of 8 H100s, two offers
    return who


def _node(who) -> Node:
    return Node.objects.get(organization=who.organization)


@pytest.mark.parametrize("name", [*READ_PAGES, "portal:provider-offer-create"])
def test_a_signed_out_visit_goes_to_sign_in_and_a_buyer_finds_no_provider_pages(name, person):
    url = reverse(name)
    assert Client().get(url)["Location"] == f"{reverse('portal:sign-in')}?next={url}"
    assert signed_in(person("buyer")).get(url).status_code == 404


def test_another_providers_ids_answer_404_and_change_nothing(provider, person):
    stranger = signed_in(person("provider"))
    node = _node(provider)
    offer = Offer.objects.filter(node=node).first()
    key = supply.agent_key_create(organization=provider.organization, name="rack 1").agent_key

    for url in (
        reverse("portal:provider-node", args=[node.pk]),
        reverse("portal:provider-node-telemetry", args=[node.pk]),
        reverse("portal:provider-offer", args=[offer.pk]),
    ):
        assert stranger.get(url).status_code == 404, url
    for name, data in [
        ("portal:provider-offer-pause", {}),
        ("portal:provider-offer-resume", {}),
        ("portal:provider-offer-reprice", {"price": "9.99"}),
        ("portal:provider-offer-withdraw", {"force": "on"}),
    ]:
        assert stranger.post(reverse(name, args=[offer.pk]), data).status_code == 404, name
    assert (
        stranger.post(reverse("portal:provider-agent-key-revoke", args=[key.pk])).status_code == 404
    )
    # and the stranger's own node list does not show it
    assert node.hostname not in stranger.get(reverse("portal:provider-nodes")).content.decode()

    offer.refresh_from_db()
    assert (offer.status, offer.price_per_gpu_hour_micros) == ("active", 2_490_000)
    assert ApiKey.objects.get(pk=key.api_key_id).revoked_at is None


def test_members_read_every_page_but_cannot_write(provider, person):
    member = signed_in(person(org=provider.organization, role="member"))
    node = _node(provider)
    offer = Offer.objects.filter(node=node).first()
    key = supply.agent_key_create(organization=provider.organization, name="rack 1").agent_key

    for name in READ_PAGES:
        page = member.get(reverse(name))
        assert page.status_code == 200, name
        assert b'type="submit">Create' not in page.content  # no write forms for them
    assert member.get(reverse("portal:provider-node", args=[node.pk])).status_code == 200
    offer_page = member.get(reverse("portal:provider-offer", args=[offer.pk]))
    assert offer_page.status_code == 200 and b"Pause offer" not in offer_page.content

    writes = [
        (
            reverse("portal:provider-site-create"),
            {"name": "B", "region": "us-east", "country": "US"},
        ),
        (reverse("portal:provider-agent-key-create"), {"name": "rack 2"}),
        (reverse("portal:provider-agent-key-revoke", args=[key.pk]), {}),
        (reverse("portal:provider-offer-create"), {}),
        (reverse("portal:provider-offer-pause", args=[offer.pk]), {}),
        (reverse("portal:provider-offer-resume", args=[offer.pk]), {}),
        (reverse("portal:provider-offer-reprice", args=[offer.pk]), {"price": "1.00"}),
        (reverse("portal:provider-offer-withdraw", args=[offer.pk]), {"force": "on"}),
    ]
    for url, data in writes:
        assert member.post(url, data).status_code == 403, url
    assert member.get(reverse("portal:provider-offer-create")).status_code == 403
    assert Site.objects.filter(organization=provider.organization).count() == 1
    assert AgentKey.objects.filter(organization=provider.organization).count() == 1
    offer.refresh_from_db()
    assert (offer.status, offer.price_per_gpu_hour_micros) == ("active", 2_490_000)


def test_site_errors_sit_beside_their_fields_and_a_good_site_is_listed(person):
    admin = signed_in(person("provider"))
    empty = admin.get(reverse("portal:provider-sites")).content.decode()
    assert "No sites yet." in empty

    bad = admin.post(
        reverse("portal:provider-site-create"),
        {"name": "Hall A", "region": "US East", "country": "USA"},
    ).content.decode()
    assert "Not a region name" in _field_error(bad, "region")
    assert "two-letter code" in _field_error(bad, "country")
    assert not Site.objects.exists()

    good = admin.post(
        reverse("portal:provider-site-create"),
        {"name": "Hall A", "region": "us-east", "country": "us"},
        follow=True,
    ).content.decode()
    assert "Created the site “Hall A” (us-east)." in good
    assert re.search(r"<td>Hall A</td>\s*<td>us-east</td>\s*<td>US</td>", good)

    # the service's own refusal (the name is taken) lands beside the name
    taken = admin.post(
        reverse("portal:provider-site-create"),
        {"name": "Hall A", "region": "eu-central", "country": "DE"},
    ).content.decode()
    assert "already has a site named 'Hall A'" in _field_error(taken, "name")
    assert Site.objects.count() == 1


def _offer_form(node: Node, **changes: str) -> dict[str, str]:
    return {
        "node": str(node.pk),
        "gpu_model": "h100-sxm-80gb",
        "gpu_count": "2",
        "price": "2.49",
        "kind": "on_demand",
        "min_lease_minutes": "60",
        **changes,
    }


def test_offer_errors_sit_beside_their_fields(provider):
    admin = signed_in(provider)
    node = _node(provider)
    Offer.objects.filter(node=node).update(status="withdrawn")  # the node's GPUs are free
    url = reverse("portal:provider-offer-create")

    cases = [
        ({"price": "0"}, "price", "must be above zero"),
        ({"price": "two"}, "price", "is not a decimal amount"),
        ({"price": "1.0000001"}, "price", "more than 6 decimal places"),
        # the service's refusals, mapped onto the form's fields
        ({"gpu_count": "9"}, "gpu_count", "has 8 H100 SXM 80GB GPUs, not 9"),
        ({"gpu_model": "a100-sxm-80gb"}, "gpu_model", "has no A100 SXM 80GB GPUs"),
        ({"kind": "interruptible"}, "preemption_grace_seconds", "is required"),
        ({"max_lease_minutes": "30"}, "max_lease_minutes", "at least min_lease_seconds"),
    ]
    for changes, field, words in cases:
        html = admin.post(url, _offer_form(node, **changes)).content.decode()
        assert words in _field_error(html, field), (changes, html)
    assert not Offer.objects.filter(status="active").exists()

    done = admin.post(url, _offer_form(node, price="2.495"), follow=True).content.decode()
    offer = Offer.objects.get(status="active")
    assert (offer.gpu_count, offer.price_per_gpu_hour_micros) == (2, 2_495_000)
    assert "2.495 USD" in done and f"Offer {offer.pk}" in done


def test_an_admin_pauses_resumes_reprices_and_withdraws_an_offer(provider):
    admin = signed_in(provider)
    offer = Offer.objects.filter(node=_node(provider), kind="on_demand").get()

    def act(name: str, data: dict | None = None) -> str:
        response = admin.post(reverse(name, args=[offer.pk]), data or {}, follow=True)
        assert response.status_code == 200
        offer.refresh_from_db()
        return response.content.decode()

    assert "Paused offer" in act("portal:provider-offer-pause") and offer.status == "paused"
    listed = admin.get(reverse("portal:provider-offers") + "?status=paused").content.decode()
    assert f"Offer {offer.pk}<" in listed and "Offer " + str(offer.pk + 1) not in listed
    assert "Resumed offer" in act("portal:provider-offer-resume") and offer.status == "active"

    html = act("portal:provider-offer-reprice", {"price": "-1"})
    assert "must be above zero" in _field_error(html, "price")
    assert offer.price_per_gpu_hour_micros == 2_490_000
    html = act("portal:provider-offer-reprice", {"price": "3.10"})
    assert offer.price_per_gpu_hour_micros == 3_100_000 and "3.10 USD" in html

    html = act("portal:provider-offer-withdraw", {"force": "on"})
    assert "its running leases ended now" in html
    assert offer.status == "withdrawn" and offer.forced_end_at is not None
    # a withdrawn offer is refused another price, with the service's words
    html = act("portal:provider-offer-reprice", {"price": "4.00"})
    assert "is withdrawn: it cannot be repriced" in html
    assert offer.price_per_gpu_hour_micros == 3_100_000


def test_an_unknown_status_filter_says_so_beside_it(provider):
    html = signed_in(provider).get(reverse("portal:provider-offers") + "?status=gone").content
    assert "Select a valid choice" in _field_error(html.decode(), "status")


def test_an_agent_key_is_shown_once_with_the_command_and_can_be_revoked(provider):
    admin = signed_in(provider)
    response = admin.post(reverse("portal:provider-agent-key-create"), {"name": "rack 7"})
    html = response.content.decode()
    key = re.search(r'id="new-key"[^>]*value="(tdm_[^"]+)"', html).group(1)
    assert "no-store" in response["Cache-Control"]
    assert (
        "python manage.py run_agent --server http://testserver --key-file /etc/tandem/agent.key"
        in html
    )
    assert f"--server http://testserver --key {key}" in html
    agent_key = AgentKey.objects.get(name="rack 7")
    assert agent_key.api_key.scope == "agent" and key not in agent_key.api_key.hashed_key

    listed = admin.get(reverse("portal:provider-agent-keys")).content.decode()
    assert "rack 7" in listed and "not registered yet" in listed and key not in listed
    bad = admin.post(reverse("portal:provider-agent-key-create"), {"name": ""}).content.decode()
    assert "This field is required." in _field_error(bad, "name")

    revoked = admin.post(
        reverse("portal:provider-agent-key-revoke", args=[agent_key.pk]), follow=True
    ).content.decode()
    assert "Revoked the agent key “rack 7”" in revoked
    assert ApiKey.objects.get(pk=agent_key.api_key_id).revoked_at is not None


def test_the_node_page_shows_telemetry_per_gpu_and_reliability_with_its_inputs(provider):
    admin = signed_in(provider)
    node = _node(provider)
    html = admin.get(reverse("portal:provider-node", args=[node.pk])).content.decode()

    assert html.count("34 °C") == 8 and html.count("70 W") == 8  # the demo's heartbeat
    assert 'data-health="healthy"' in html
    assert re.search(r"\d+ of \d+ minutes with a heartbeat", html)
    assert "0 of 0 ended leases" in html and "<code>uptime_share *" in html
    telemetry = reverse("portal:provider-node-telemetry", args=[node.pk])
    assert f'hx-get="{telemetry}" hx-trigger="every 5s"' in html

    # the polled partial: the same section alone, and it follows the node's health
    Node.objects.filter(pk=node.pk).update(health="unhealthy", health_reason="no heartbeat")
    fragment = admin.get(telemetry).content.decode()
    assert fragment.lstrip().startswith('<section id="telemetry"') and "<html" not in fragment
    assert 'data-health="unhealthy"' in fragment and "no heartbeat" in fragment


def test_csrf_is_enforced_on_the_provider_forms(provider):
    client = Client(enforce_csrf_checks=True)
    client.force_login(provider.user)
    offer = Offer.objects.filter(node=_node(provider)).first()
    assert client.post(reverse("portal:provider-offer-pause", args=[offer.pk])).status_code == 403
    offer.refresh_from_db()
    assert offer.status == "active"


# --- query counts: the same with 1 row and with 200 behind each page ------------


def _fill(organization, buyer, rows: int) -> None:
    """``rows`` sites, nodes (2 GPUs each), offers, leases and agent keys, written
    directly: the pages' reads are measured, not the services'."""
    now = timezone.now()
    sites = Site.objects.bulk_create(
        Site(organization=organization, name=f"site {n}", region="us-east", country="US")
        for n in range(rows)
    )
    nodes = Node.objects.bulk_create(
        Node(organization=organization, site=site, hostname=f"n{n}", registered_at=now)
        for n, site in enumerate(sites)
    )
    Gpu.objects.bulk_create(
        Gpu(
            node=node,
            index=i,
            uuid=f"GPU-{organization.pk}-{node.pk}-{i}",
            name="NVIDIA H100 80GB HBM3",
            model="h100-sxm-80gb",
            memory_total_mib=81559,
            interconnect="nvlink",
        )
        for node in nodes
        for i in range(2)
    )
    offers = Offer.objects.bulk_create(
        Offer(
            organization=organization,
            node=node,
            gpu_model="h100-sxm-80gb",
            gpu_count=2,
            price_per_gpu_hour_micros=2_000_000,
            currency="USD",
            window_start=now,
            min_lease_seconds=3600,
            kind="on_demand",
            region="us-east",
            created_at=now,
        )
        for node in nodes
    )
    order = Order.objects.create(
        organization=buyer,
        kind="on_demand",
        time_in_force="standing",
        workload_kind="raw",
        gpu_models=["h100-sxm-80gb"],
        gpus_per_node=2,
        earliest_start=now,
        limit_price_per_gpu_hour_micros=3_000_000,
        currency="USD",
        placed_at=now,
    )
    Lease.objects.bulk_create(
        Lease(
            order=order,
            allocation=f"a{n}",
            organization=buyer,
            provider=organization,
            offer=offer,
            node=offer.node,
            kind="on_demand",
            gpu_model="h100-sxm-80gb",
            gpu_count=2,
            price_per_gpu_hour_micros=2_000_000,
            currency="USD",
            state="active",
            created_at=now,
            starts_at=now - timedelta(hours=1),
            started_at=now - timedelta(hours=1),
        )
        for n, offer in enumerate(offers)
    )
    for n in range(rows):
        supply.agent_key_create(organization=organization, name=f"key {n}")


def test_every_provider_page_costs_the_same_queries_with_1_and_200_rows(
    person, django_assert_max_num_queries
):
    counts: dict[str, list[int]] = {}
    for rows in (1, 200):
        who, buyer = person("provider"), person("buyer")
        _fill(who.organization, buyer.organization, rows)
        client = signed_in(who)
        pages = [reverse(name) for name in READ_PAGES]
        pages += [
            reverse("portal:provider-offers") + "?status=active",
            reverse("portal:provider-offer-create"),
        ]
        node = Node.objects.filter(organization=who.organization).first()
        offer = Offer.objects.filter(organization=who.organization).first()
        detail = [
            reverse("portal:provider-node", args=[node.pk]),
            reverse("portal:provider-node-telemetry", args=[node.pk]),
            reverse("portal:provider-offer", args=[offer.pk]),
        ]
        for position, url in enumerate(pages + detail):
            with django_assert_max_num_queries(12), CaptureQueriesContext(connection) as seen:
                response = client.get(url)
            assert response.status_code == 200, url
            if rows == 200 and url in pages[:6]:
                assert b"Page 1 of 8 (200 in all)" in response.content, url
            if rows == 200 and "status=active" in url:  # the next page keeps the filter
                assert b'href="?status=active&amp;page=2" rel="next"' in response.content
            counts.setdefault(str(position), []).append(len(seen.captured_queries))
    for position, (few, many) in counts.items():
        assert few == many, f"page {position}: {few} queries with 1 row, {many} with 200"
