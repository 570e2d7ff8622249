"""Preemption: an order the engine placed over interruptible leases gives them notice;
they end when the offer's grace runs out (``leases_tick``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from core.db import retry_transaction
from marketplace import engine, events
from marketplace.common import _lease_event
from marketplace.models import Lease, Order
from providers.models import Offer


@retry_transaction
def _preemption_apply(preemption: engine.Preemption, *, now: datetime) -> bool:
    order = Order.objects.select_for_update().filter(pk=preemption.order_id).first()
    if order is None or order.state != Order.State.OPEN:
        return False
    offer = Offer.objects.get(pk=preemption.offer_id)
    grace = timedelta(seconds=offer.preemption_grace_seconds or 0)
    victims = list(
        Lease.objects.select_for_update()
        .filter(
            pk__in=preemption.lease_ids,
            state=Lease.State.ACTIVE,
            kind=Order.Kind.INTERRUPTIBLE,
            preempted_for__isnull=True,
        )
        .order_by("pk")
    )
    if len(victims) != len(preemption.lease_ids):
        return False
    for victim in victims:
        victim.preemption_noticed_at = now
        victim.preempt_at = now + grace
        victim.preempted_for = order
        victim.save(update_fields=["preemption_noticed_at", "preempt_at", "preempted_for"])
        _lease_event(
            victim,
            events.LeasePreemptionNoticed(
                lease_id=victim.pk,
                organization_id=victim.organization_id,
                node_id=victim.node_id,
                gpu_uuids=sorted(victim.gpus.values_list("gpu_uuid", flat=True)),
                for_order_id=order.pk,
                preempt_at=victim.preempt_at.isoformat(),
                at=now.isoformat(),
            ),
        )
    return True
