"""The provider's earnings by day, node and offer (with CSV) and a node's telemetry
history, through Django's test client: the figures add up to the month's statement,
each provider sees its own, buyers and finance find no such pages, bad periods are
refused beside their fields, and queries are the same with 1 row and with many."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core.money import Money
from invoicing.statements import statement_compute
from providers import demo as supply_demo
from providers.models import Gpu, GpuMinuteRollup, Node
from tests.invoicing.world import event, grant, record, settle, taxed_month
from tests.subjects import healthy_node, lease_unheld

pytestmark = pytest.mark.django_db


def signed_in(who) -> Client:
    client = Client()
    client.force_login(who.user)
    return client


def _field_error(html: str, field: str) -> str:
    marker = f'id="id_{field}_error"'
    assert marker in html, f"no error beside {field}"
    return html.split(marker, 1)[1].split("</ul>", 1)[0]


def _csv(response) -> list[list[str]]:
    assert response.status_code == 200, response.content[:300]
    return list(csv.reader(io.StringIO(response.content.decode())))


def test_earnings_by_day_node_and_offer_add_up_to_the_statement(cast, person):
    # given a month of usage rated today on two providers' GPUs
    taxed_month(cast, events_per_buyer=20)
    admin = person(org=cast.provider_a, role="member")
    today = timezone.now().date()
    statement = statement_compute(provider=cast.provider_a, period=today.replace(day=1))
    assert statement.gross_micros > 0
    client = signed_in(admin)

    page = client.get(reverse("portal:provider-earnings-breakdown")).content.decode()

    # then the total, and each view's total, is the month's statement so far
    total = str(Money(statement.gross_micros, "USD"))
    assert f'data-figure="total">{total}<' in page
    for view in ("day", "node", "offer"):
        table = page.split(f'data-earnings-by="{view}"', 1)[1].split("</table>", 1)[0]
        rows = re.findall(r"<tr>\s*<th scope=\"row\">(.*?)</tr>", table, re.S)
        assert rows, view
        assert total in table.split("<tfoot>", 1)[1]
    # by day: today; by node: the statement's nodes; by offer: each lease's offer
    assert f">{today.isoformat()}<" in page.split('data-earnings-by="day"', 1)[1]
    nodes = page.split('data-earnings-by="node"', 1)[1].split("</table>", 1)[0]
    for line in statement.lines:
        if line.node:
            assert line.node in nodes
    offers = page.split('data-earnings-by="offer"', 1)[1].split("</table>", 1)[0]
    assert re.search(r'href="/provider/offers/\d+/">Offer \d+</a>', offers)
    assert 'data-chart="earnings-by-day-chart"' in page

    # the CSVs say the same, amounts as decimal text
    for view in ("day", "node", "offer"):
        rows = _csv(
            client.get(
                reverse("portal:provider-earnings-breakdown-csv"),
                {"since": today.replace(day=1), "until": today, "by": view},
            )
        )
        assert rows[0] == [
            view,
            "gpu_seconds",
            "gpu_hours",
            "gross",
            "platform_fee",
            "net_payable",
            "currency",
        ]
        assert (
            rows[-1][0] == "Total" and rows[-1][3] == Money(statement.gross_micros, "USD").format()
        )
        assert sum(int(row[1]) for row in rows[1:-1]) == int(rows[-1][1]) == statement.gpu_seconds

    # another provider sees its own earnings only
    other = signed_in(person(org=cast.provider_b))
    theirs = statement_compute(provider=cast.provider_b, period=today.replace(day=1))
    page = other.get(reverse("portal:provider-earnings-breakdown")).content.decode()
    assert f'data-figure="total">{Money(theirs.gross_micros, "USD")}<' in page


def test_earnings_pages_refuse_bad_periods_and_are_no_buyers_or_finances(cast, person):
    client = signed_in(person("provider"))
    url = reverse("portal:provider-earnings-breakdown")
    backwards = client.get(url, {"since": "2026-10-05", "until": "2026-10-01"})
    assert backwards.status_code == 400
    assert "on or after" in _field_error(backwards.content.decode(), "until")
    too_long = client.get(url, {"since": "2024-01-01", "until": "2026-10-01"})
    assert "at most 366 days" in _field_error(too_long.content.decode(), "until")
    not_a_date = client.get(url, {"since": "soon"})
    assert not_a_date.status_code == 400 and _field_error(not_a_date.content.decode(), "since")
    csv_url = reverse("portal:provider-earnings-breakdown-csv")
    refused = client.get(csv_url, {"by": "planet"})
    assert refused.status_code == 400 and "by:" in refused.content.decode()
    page = client.get(url, {"by": "planet"})
    assert page.status_code == 400 and "not one of the available choices" in page.content.decode()
    empty = client.get(url).content.decode()
    assert "Nothing earned in these days" in empty
    for who in (person("buyer"), person("buyer", role="finance")):
        assert signed_in(who).get(url).status_code == 404
        assert signed_in(who).get(csv_url).status_code == 404
    assert Client().get(url).status_code == 302


def _rollups(node, minutes: int, now) -> None:
    gpus = list(Gpu.objects.filter(node=node).order_by("index"))
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes)
    GpuMinuteRollup.objects.bulk_create(
        GpuMinuteRollup(
            gpu=gpu,
            minute=start + timedelta(minutes=m),
            samples=4,
            utilization_samples=4,
            utilization_sum=4 * (50 + gpu.index),
            utilization_max=60,
            memory_used_max_mib=1024 * (gpu.index + 1),
            temperature_max_c=60 + gpu.index,
            power_samples=4,
            power_sum_mw=4 * 300_000,
        )
        for m in range(minutes)
        for gpu in gpus
    )


def test_a_nodes_telemetry_history_charts_each_gpu_over_a_table(person):
    admin = person("provider")
    node = healthy_node(admin.organization, "rack-1", count=2)
    now = timezone.now()
    _rollups(node, 30, now)
    client = signed_in(admin)
    url = reverse("portal:provider-node-history", args=[node.pk])

    page = client.get(url, {"hours": "1"}).content.decode()

    for key in ("utilization", "memory", "temperature", "power"):
        assert f'data-chart="{key}-chart"' in page and f'data-telemetry="{key}"' in page
    utilization = page.split('data-telemetry="utilization"', 1)[1].split("</table>", 1)[0]
    assert '<th scope="col" class="num">GPU 1</th>' in utilization
    assert '<td class="num">50.0</td><td class="num">51.0</td>' in utilization
    power = page.split('data-telemetry="power"', 1)[1].split("</table>", 1)[0]
    assert '<td class="num">300.0</td>' in power
    assert utilization.count('<td class="num">50.0</td>') == 30  # one row per minute
    # six hours: five-minute steps
    six = client.get(url).content.decode()
    temperature = six.split('data-telemetry="temperature"', 1)[1].split("</table>", 1)[0]
    assert temperature.count('<td class="num">61</td>') in (6, 7)  # 30 minutes, 5 a row
    assert client.get(url, {"hours": "7"}).status_code == 400
    # another provider's node is not found; buyers have no provider pages
    assert signed_in(person("provider")).get(url).status_code == 404
    assert signed_in(person("buyer")).get(url).status_code == 404
    assert client.get(reverse("portal:provider-node", args=[node.pk])).status_code == 200


def _earn(cast, leases: int, seconds: int) -> None:
    """GPU time of ``leases`` new leases of Buyer A on Provider A, each on its own node
    and offer, rated into the ledger now."""
    events = []
    for _ in range(leases):
        lease = lease_unheld(cast.buyer_a, cast.provider_a, price=2_000_000)
        events.append(
            event(
                cast.buyer_a,
                "gpu.seconds",
                seconds,
                timezone.now() - timedelta(minutes=5),
                lease=lease.usage_subject,
                gpu_model="h100-sxm-80gb",
            )
        )
    record(events)
    settle()


def test_the_new_provider_pages_cost_the_same_queries_with_1_and_many_rows(
    cast, person, django_assert_max_num_queries
):
    admin = person(org=cast.provider_a)
    node = healthy_node(cast.provider_a, "rack-q", count=2)
    grant(cast.buyer_a, 10**9, "q-credit")
    counts: dict[str, list[int]] = {}
    for rows in (1, 30):
        GpuMinuteRollup.objects.all().delete()
        _rollups(node, rows, timezone.now())
        _earn(cast, 1 if rows == 1 else rows - 1, 600)
        pages = [
            reverse("portal:provider-earnings-breakdown"),
            reverse("portal:provider-earnings-breakdown-csv") + "?by=offer",
            reverse("portal:provider-node-history", args=[node.pk]) + "?hours=1",
        ]
        for url in pages:
            with django_assert_max_num_queries(25), CaptureQueriesContext(connection) as seen:
                response = signed_in(admin).get(url)
            assert response.status_code == 200, url
            counts.setdefault(url, []).append(len(seen.captured_queries))
        offers = signed_in(admin).get(pages[1]).content.decode().count("Offer ")
        assert offers == (1 if rows == 1 else 30)
    for url, (few, many) in counts.items():
        assert few == many, f"{url}: {few} queries with 1 row, {many} with 30"


def test_the_demo_nodes_history_shows_its_busy_and_idle_gpus(person):
    admin = person("provider")
    supply_demo.load(provider=admin.organization)
    assert supply_demo.telemetry_history(provider=admin.organization) == 90
    assert supply_demo.telemetry_history(provider=admin.organization) == 0  # once
    node = Node.objects.get(organization=admin.organization)
    page = signed_in(admin).get(reverse("portal:provider-node-history", args=[node.pk]))
    table = page.content.decode().split('data-telemetry="utilization"', 1)[1]
    first = table.split("<tbody>", 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r'<td class="num">([^<]+)</td>', first)
    assert len(cells) == 8 and all(float(c) >= 70 for c in cells[:4]) and cells[4:] == ["0.0"] * 4
