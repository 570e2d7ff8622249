"""Fixtures of the marketplace tests: a provider with a healthy node and an offer,
a buyer with credits, and ledger reads."""

from __future__ import annotations

from typing import Any

import pytest

from core.models import Organization
from ledger import services as ledger
from ledger.models import Account, Balance, Hold
from providers import services as supply
from providers.models import Node, Offer, Site

H100 = "NVIDIA H100 80GB HBM3"


def inventory(count: int, prefix: str, name: str = H100, memory_mib: int = 81559) -> dict:
    return {
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "gpus": [
            {
                "index": index,
                "uuid": f"{prefix}-{index:04d}",
                "name": name,
                "memory_total_mib": memory_mib,
                "interconnect": "nvlink",
                "nvlink_links": 18,
            }
            for index in range(count)
        ],
    }


def healthy_node(
    org: Organization,
    hostname: str,
    *,
    count: int = 8,
    region: str = "us-east",
    country: str = "US",
    reliability: float | None = 0.99,
) -> Node:
    site = Site.objects.filter(organization=org, name=f"site-{region}").first()
    if site is None:
        site = supply.site_create(
            organization=org, name=f"site-{region}", region=region, country=country
        )
    node = supply.node_register(
        organization=org,
        hostname=hostname,
        site_name=site.name,
        inventory=inventory(count, f"GPU-{org.pk}-{hostname}"),
    )
    supply.node_heartbeat_record(
        organization=org,
        node_id=node.pk,
        samples=[{"uuid": g.uuid, "ecc_uncorrected": 0} for g in node.gpus.all()],
    )
    Node.objects.filter(pk=node.pk).update(reliability_score=reliability)
    node.refresh_from_db()
    assert node.health == Node.Health.HEALTHY
    return node


def offer(node: Node, *, count: int = 8, price: int = 2_000_000, **extra: Any) -> Offer:
    kind = extra.pop("kind", Offer.Kind.ON_DEMAND)
    if kind == Offer.Kind.INTERRUPTIBLE:
        extra.setdefault("preemption_grace_seconds", 120)
    return supply.offer_create(
        organization=node.organization,
        node_id=node.pk,
        gpu_model="h100-sxm-80gb",
        gpu_count=count,
        price_per_gpu_hour_micros=price,
        kind=kind,
        min_lease_seconds=extra.pop("min_lease_seconds", 60),
        **extra,
    )


def fund(org: Organization, micros: int) -> Account:
    ledger.credits_grant(
        organization=org, amount_micros=micros, currency="USD", reason="test credits"
    )
    return ledger.account_open(organization=org, kind=Account.Kind.CREDIT, currency="USD")


def balance(org: Organization | None, kind: str) -> Balance:
    account = ledger.account_open(organization=org, kind=kind, currency="USD")
    return Balance.objects.get(account=account)


def available(org: Organization) -> int:
    b = balance(org, Account.Kind.CREDIT)
    return b.credits_posted - b.debits_posted - b.debits_pending


def hold(hold_id: str) -> Hold:
    return Hold.objects.get(hold_id=hold_id)


@pytest.fixture
def buyer(cast):
    fund(cast.buyer_a, 1_000_000_000)
    return cast.buyer_a
