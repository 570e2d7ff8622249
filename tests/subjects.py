"""Usage subjects that exist, for tests and benches that send usage: usage is only
accepted for a lease, fine-tune job or deployment the platform made, of the buyer the
event names (metering.provenance._proven).

- ``lease_matched``: a lease made by the market itself (a node, an offer, an order and
  a matching round, all through their services). Its GPU time is billed by settling
  its hold, so rating leaves its ``gpu.seconds`` to the hold. Needs real commits
  (``transaction=True`` tests, or outside any transaction).
- ``lease_unheld``: a lease row without a hold (node, offer and order through their
  services, the lease written as matching would write it), whose ``gpu.seconds`` are
  rated into the ledger: what the rating tests bill.
- ``job_of`` / ``deployment_of``: a job or deployment row of the buyer, as creating
  it leaves it (the tests of the workloads write them the same way).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import count

from django.utils import timezone

from core.models import Organization
from marketplace import services as market
from marketplace.models import Lease, Order
from marketplace.services import OrderSpec
from marketplace.workloads.models import Deployment, File, FineTuneJob
from providers.models import Node, Offer
from tests.marketplace.conftest import fund, healthy_node, offer

_serial = count(1)


def _node_and_offer(provider: Organization, price: int, gpus: int) -> tuple[Node, Offer]:
    node = healthy_node(provider, f"usage-{next(_serial)}", count=gpus)
    return node, offer(node, count=gpus, price=price)


def lease_matched(
    buyer: Organization, provider: Organization, *, price: int = 2_000_000, gpus: int = 1
) -> Lease:
    """A live lease the market made for ``buyer`` on a new node of ``provider``."""
    node, _ = _node_and_offer(provider, price, gpus)
    fund(buyer, 10**12)
    order = market.order_place(
        organization=buyer,
        spec=OrderSpec(
            gpus_per_node=gpus,
            gpu_models=["h100-sxm-80gb"],
            limit_price_per_gpu_hour_micros=price,
            duration_seconds=24 * 3600,
        ),
    )
    market.matching_round()
    lease = Lease.objects.get(order=order, node=node)
    assert lease.state == Lease.State.ACTIVE, lease.state
    return lease


def lease_unheld(
    buyer: Organization,
    provider: Organization,
    *,
    price: int = 2_000_000,
    gpus: int = 1,
    started_at: datetime | None = None,
    ended_at: datetime | None = None,
    gpu_model: str | None = None,
) -> Lease:
    """A lease of ``buyer`` on a new node of ``provider`` at ``price`` per GPU-hour,
    started (by default a day ago) and ended or running, with no hold (node and offer
    through their services). ``gpu_model``: the model the lease bills (by default the
    offer's), for worlds whose statements group by short names."""
    node, listed = _node_and_offer(provider, price, gpus)
    now = timezone.now()
    started_at = started_at or now - timedelta(days=1)
    # The order as matching leaves it (filled), written here rather than placed so
    # that no credit is reserved or granted: the buyer's balances are the test's.
    order = Order.objects.create(
        organization=buyer,
        state=Order.State.FILLED,
        kind=Order.Kind.ON_DEMAND,
        time_in_force=Order.TimeInForce.STANDING,
        workload_kind=Order.Workload.RAW,
        gpu_models=[listed.gpu_model],
        gpus_per_node=gpus,
        earliest_start=started_at,
        limit_price_per_gpu_hour_micros=price,
        currency="USD",
        placed_at=started_at,
        closed_at=started_at,
    )
    return Lease.objects.create(
        order=order,
        allocation=f"{order.pk}:1",
        organization=buyer,
        provider=provider,
        offer=listed,
        node=node,
        kind=Order.Kind.ON_DEMAND,
        gpu_model=gpu_model or listed.gpu_model,
        gpu_count=gpus,
        price_per_gpu_hour_micros=price,
        currency="USD",
        state=Lease.State.ACTIVE if ended_at is None else Lease.State.ENDED,
        created_at=started_at,
        starts_at=started_at,
        started_at=started_at,
        ended_at=ended_at,
    )


def job_of(buyer: Organization, *, public_id: str | None = None) -> FineTuneJob:
    """A running fine-tune job of ``buyer`` (``public_id``: its id, unique across
    buyers; by default a new one)."""
    n = next(_serial)
    file = File.objects.create(
        public_id=f"file-usage{buyer.pk}x{n}",
        organization=buyer,
        purpose="fine-tune",
        filename="train.jsonl",
        status=File.Status.PROCESSED,
    )
    return FineTuneJob.objects.create(
        public_id=public_id or f"ft-usage{buyer.pk}x{n}",
        organization=buyer,
        model="tandem/tiny-llama",
        training_file=file,
        hyperparameters={"n_epochs": 1},
        seed=1,
        status=FineTuneJob.Status.RUNNING,
        currency="USD",
        fine_tuned_model=f"ft:tandem/tiny-llama:usage:{buyer.pk}x{n}",
    )


def deployment_of(
    buyer: Organization | None, *, model: str | None = None, public_id: str | None = None
) -> Deployment:
    """A ready deployment of ``buyer`` (None: a platform deployment of a base model);
    ``public_id``: its id, unique across buyers (by default a new one)."""
    n = next(_serial)
    return Deployment.objects.create(
        public_id=public_id or f"dep-usage{n}x{buyer.pk if buyer else 0}",
        organization=buyer,
        model=model or f"usage-model-{n}",
        base_model="tandem/tiny-llama",
        status=Deployment.Status.READY,
        idle_timeout_seconds=600,
    )


def lease_for(buyer: Organization, provider: Organization, *, price: int = 2_000_000) -> Lease:
    """``buyer``'s unheld lease from ``provider`` at ``price``, made on first use."""
    found = Lease.objects.filter(
        organization=buyer, provider=provider, price_per_gpu_hour_micros=price
    ).first()
    return found or lease_unheld(buyer, provider, price=price)


def job_for(buyer: Organization) -> FineTuneJob:
    """``buyer``'s fine-tune job, made on first use."""
    return FineTuneJob.objects.filter(organization=buyer).first() or job_of(buyer)


def deployment_for(buyer: Organization) -> Deployment:
    """``buyer``'s deployment, made on first use."""
    return Deployment.objects.filter(organization=buyer).first() or deployment_of(buyer)
