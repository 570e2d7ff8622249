"""Offers: capacity a provider lists on one node, and its life (paused, resumed,
repriced, withdrawn). Each change is an event on the offer's stream."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from msgspec import Meta

from core.errors import Conflict, NotFound
from core.eventstore import DomainEvent
from core.models import Organization
from core.validation import field_error, validated
from providers import catalog, events
from providers.models import Node, Offer, OfferActivePeriod
from providers.streams import iso, stream_append


def _overlaps(
    a_start: datetime, a_end: datetime | None, b_start: datetime, b_end: datetime | None
) -> bool:
    """Half-open [start, end) windows; None is open-ended."""
    return (b_end is None or a_start < b_end) and (a_end is None or b_start < a_end)


def _offer_event(offer: Offer, event: DomainEvent) -> None:
    stream_append(
        stream_type="offer",
        stream_id=f"offer-{offer.pk}",
        tenant_id=offer.organization_id,
        event=event,
    )


MAX_GPUS_PER_NODE = 64
MAX_PRICE_MICROS = 10**12  # per GPU-hour: a million units of the currency
Seconds = Annotated[int, Meta(ge=60, le=10**8)]
Aware = Annotated[datetime, Meta(tz=True)]


class OfferInput(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a provider lists, with the bounds of each field; ``offer_create`` checks it
    (core.validation) and then the rules against the node and between fields."""

    node_id: Annotated[int, Meta(ge=1)]
    gpu_model: Annotated[str, Meta(min_length=1, max_length=64)]
    gpu_count: Annotated[int, Meta(ge=1, le=MAX_GPUS_PER_NODE)]
    price_per_gpu_hour_micros: Annotated[int, Meta(ge=1, le=MAX_PRICE_MICROS)]
    kind: Offer.Kind
    window_start: Aware | None = None
    window_end: Aware | None = None
    min_lease_seconds: Seconds = 3600
    max_lease_seconds: Seconds | None = None
    preemption_grace_seconds: Annotated[int, Meta(ge=0, le=86_400)] | None = None


@transaction.atomic
def offer_create(
    *,
    organization: Organization,
    node_id: int,
    gpu_model: str,
    gpu_count: int,
    price_per_gpu_hour_micros: int,
    kind: str,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    min_lease_seconds: int = 3600,
    max_lease_seconds: int | None = None,
    preemption_grace_seconds: int | None = None,
) -> Offer:
    """List capacity on one node. Validation errors are 400s naming the field."""
    given = validated(
        OfferInput,
        {
            "node_id": node_id,
            "gpu_model": gpu_model,
            "gpu_count": gpu_count,
            "price_per_gpu_hour_micros": price_per_gpu_hour_micros,
            "kind": kind,
            "window_start": window_start,
            "window_end": window_end,
            "min_lease_seconds": min_lease_seconds,
            "max_lease_seconds": max_lease_seconds,
            "preemption_grace_seconds": preemption_grace_seconds,
        },
    )
    now = timezone.now()
    window_start, window_end = given.window_start or now, given.window_end
    gpu_model, gpu_count, kind = given.gpu_model, given.gpu_count, given.kind
    min_lease_seconds, max_lease_seconds = given.min_lease_seconds, given.max_lease_seconds
    grace = given.preemption_grace_seconds
    node = (
        Node.objects.select_for_update().filter(organization=organization, pk=given.node_id).first()
    )
    if node is None:
        raise NotFound(
            f"node {given.node_id} not found", details={"fields": {"node_id": ["not found"]}}
        )
    # The rules between fields:
    if window_end is not None and window_end <= window_start:
        raise field_error("window_end", "must be after window_start")
    if window_end is not None and window_end <= now:
        raise field_error("window_end", "is in the past")
    if max_lease_seconds is not None and max_lease_seconds < min_lease_seconds:
        raise field_error("max_lease_seconds", "must be at least min_lease_seconds")
    if window_end is not None and (window_end - window_start).total_seconds() < min_lease_seconds:
        raise field_error("min_lease_seconds", "is longer than the availability window")
    interruptible = kind == Offer.Kind.INTERRUPTIBLE
    if interruptible and grace is None:
        raise field_error(
            "preemption_grace_seconds", "is required for interruptible offers (seconds of notice)"
        )
    if not interruptible and grace is not None:
        raise field_error("preemption_grace_seconds", "applies only to interruptible offers")
    # ... and against the catalog and the node:
    model = catalog.model_get(gpu_model)
    if model is None:
        raise field_error("gpu_model", f"unknown GPU model {gpu_model!r}; see /gpu-models")
    on_node = node.gpus.filter(present=True, model=gpu_model).count()
    if on_node == 0:
        raise field_error("gpu_model", f"node {node.hostname} has no {model.name} GPUs")
    if gpu_count > on_node:
        raise field_error(
            "gpu_count", f"node {node.hostname} has {on_node} {model.name} GPUs, not {gpu_count}"
        )
    if node.site is None:
        raise field_error(
            "node_id", f"node {node.hostname} has no site, so no region: register it with --site"
        )
    # The node row is locked above, so two offers for the same node cannot both pass.
    overlapping = [
        other
        for other in Offer.objects.filter(node=node, gpu_model=gpu_model).exclude(
            status=Offer.Status.WITHDRAWN
        )
        if _overlaps(window_start, window_end, other.window_start, other.window_end)
    ]
    listed = sum(other.gpu_count for other in overlapping)
    if listed + gpu_count > on_node:
        raise field_error(
            "window_start",
            f"overlaps offers {', '.join(str(o.pk) for o in overlapping)} for the same GPUs: "
            f"together they would list {listed + gpu_count} of the node's {on_node} "
            f"{model.name} GPUs",
            conflicting_offer_ids=[o.pk for o in overlapping],
        )

    offer = Offer.objects.create(
        organization=organization,
        node=node,
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        price_per_gpu_hour_micros=given.price_per_gpu_hour_micros,
        currency=settings.TANDEM_CURRENCY,
        window_start=window_start,
        window_end=window_end,
        min_lease_seconds=min_lease_seconds,
        max_lease_seconds=max_lease_seconds,
        kind=kind,
        preemption_grace_seconds=grace,
        region=node.site.region,
        created_at=now,
    )
    OfferActivePeriod.objects.create(offer=offer, started_at=now)
    _offer_event(
        offer,
        events.OfferListed(
            offer_id=offer.pk,
            organization_id=organization.pk,
            node_id=node.pk,
            gpu_model=gpu_model,
            gpu_count=gpu_count,
            price_per_gpu_hour_micros=given.price_per_gpu_hour_micros,
            currency=offer.currency,
            window_start=window_start.isoformat(),
            window_end=iso(window_end),
            min_lease_seconds=min_lease_seconds,
            max_lease_seconds=max_lease_seconds,
            kind=kind,
            preemption_grace_seconds=grace,
            region=offer.region,
            at=now.isoformat(),
        ),
    )
    return offer


def _offer_locked(*, offer: Offer) -> Offer:
    return Offer.objects.select_for_update().get(pk=offer.pk)


def _withdrawn_conflict(offer: Offer, action: str) -> Conflict:
    return Conflict(
        f"offer {offer.pk} is withdrawn: it cannot be {action}", details={"status": offer.status}
    )


@transaction.atomic
def offer_pause(*, offer: Offer) -> Offer:
    """Stop new leases on the offer; running leases go on. Pausing twice is a no-op."""
    offer = _offer_locked(offer=offer)
    if offer.status == Offer.Status.WITHDRAWN:
        raise _withdrawn_conflict(offer, "paused")
    if offer.status == Offer.Status.PAUSED:
        return offer
    now = timezone.now()
    offer.status = Offer.Status.PAUSED
    offer.save(update_fields=["status"])
    OfferActivePeriod.objects.filter(offer=offer, ended_at=None).update(ended_at=now)
    _offer_event(
        offer,
        events.OfferPaused(
            offer_id=offer.pk, organization_id=offer.organization_id, at=now.isoformat()
        ),
    )
    return offer


@transaction.atomic
def offer_resume(*, offer: Offer) -> Offer:
    offer = _offer_locked(offer=offer)
    if offer.status == Offer.Status.WITHDRAWN:
        raise _withdrawn_conflict(offer, "resumed")
    if offer.status == Offer.Status.ACTIVE:
        return offer
    now = timezone.now()
    offer.status = Offer.Status.ACTIVE
    offer.save(update_fields=["status"])
    OfferActivePeriod.objects.create(offer=offer, started_at=now)
    _offer_event(
        offer,
        events.OfferResumed(
            offer_id=offer.pk, organization_id=offer.organization_id, at=now.isoformat()
        ),
    )
    return offer


@transaction.atomic
def offer_reprice(*, offer: Offer, price_per_gpu_hour_micros: int) -> Offer:
    """A new price for new leases; running leases keep theirs."""
    if price_per_gpu_hour_micros <= 0:
        raise field_error("price_per_gpu_hour_micros", "must be a positive number of micro-units")
    offer = _offer_locked(offer=offer)
    if offer.status == Offer.Status.WITHDRAWN:
        raise _withdrawn_conflict(offer, "repriced")
    previous = offer.price_per_gpu_hour_micros
    if previous == price_per_gpu_hour_micros:
        return offer
    now = timezone.now()
    offer.price_per_gpu_hour_micros = price_per_gpu_hour_micros
    offer.save(update_fields=["price_per_gpu_hour_micros"])
    _offer_event(
        offer,
        events.OfferRepriced(
            offer_id=offer.pk,
            organization_id=offer.organization_id,
            previous_price_per_gpu_hour_micros=previous,
            price_per_gpu_hour_micros=price_per_gpu_hour_micros,
            currency=offer.currency,
            applies_to="new_leases",
            at=now.isoformat(),
        ),
    )
    return offer


@transaction.atomic
def offer_withdraw(*, offer: Offer, force: bool = False) -> Offer:
    """Take the offer off the market. Running leases run to the end of their window;
    with ``force`` they end now and the event carries that moment (``forced_end_at``),
    past which buyers are not billed. Forcing an offer already withdrawn without force
    is allowed (one more event); anything else repeated is a no-op."""
    offer = _offer_locked(offer=offer)
    if offer.status == Offer.Status.WITHDRAWN and (offer.forced_end_at or not force):
        return offer
    now = timezone.now()
    if offer.status != Offer.Status.WITHDRAWN:
        offer.withdrawn_at = now
    offer.status = Offer.Status.WITHDRAWN
    if force:
        offer.forced_end_at = now
    offer.save(update_fields=["status", "withdrawn_at", "forced_end_at"])
    OfferActivePeriod.objects.filter(offer=offer, ended_at=None).update(ended_at=now)
    _offer_event(
        offer,
        events.OfferWithdrawn(
            offer_id=offer.pk,
            organization_id=offer.organization_id,
            forced=force,
            forced_end_at=iso(offer.forced_end_at) if force else None,
            at=now.isoformat(),
        ),
    )
    return offer
