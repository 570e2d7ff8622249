"""``/v1/billing/usage`` in Together's shape (``client.organization.usage.costs.list``:
``BillingUsageReport`` of ``BillingUsageWindow`` rows with ``BillingUsageLineItem`` s),
for one month at ``day`` or ``hour`` granularity, in cursor pages of windows.

Line items, per window:

- **GPU time** of the organization's raw leases (clusters and orders): what each lease
  has been billed (GPU-seconds at the lease price plus the platform fee, as the ledger
  settled it), reported in the window of its ``billed_until``, the end of the time
  settled so far. Quantity in GPU-hours; for a dedicated endpoint's replica (billed per
  whole minute), in GPU-minutes, with the endpoint and deployment it served.
- **Tokens** metered for the organization (``tokens.prompt``, ``tokens.completion``,
  ``tokens.training``, ``tokens.evaluation``), grouped by type and model, rated with
  the price book's rate in force at the window's start (``billing.pricing.rate_for``,
  the function the ledger's rating uses). Quantity in tokens.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Trunc

from core.models import Organization
from core.money import Money, rate_amount
from marketplace.models import Lease
from marketplace.workloads.dedicated import WORKLOAD_PREFIX as DEDICATED_PREFIX
from marketplace.workloads.errors import invalid
from marketplace.workloads.models import Deployment
from metering.models import UsageEvent
from pricing.selectors import rate_for

GRANULARITIES = ("day", "hour")
LIMIT_MAX = 1000
TOKEN_TYPES = {
    "tokens.prompt": "Serverless Inference - Input Tokens",
    "tokens.completion": "Serverless Inference - Output Tokens",
    "tokens.training": "Fine-tuning - Training Tokens",
    "tokens.evaluation": "Fine-tuning - Evaluation Tokens",
}


@dataclass(frozen=True, slots=True)
class Report:
    month: str
    currency: str
    windows: list[dict[str, Any]]
    next_cursor: str | None
    earliest: datetime | None
    latest: datetime | None


def _month(raw: str | None, now: datetime) -> tuple[str, datetime, datetime]:
    text = raw or now.strftime("%Y-%m")
    try:
        start = datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
    except ValueError as error:
        raise invalid("month must be YYYY-MM, e.g. 2026-03", param="month") from error
    end = (start + timedelta(days=32)).replace(day=1)
    return text, start, end


def _decimal(micros: int) -> str:
    return str((Decimal(micros) / 1_000_000).normalize())


def _amount(micros: int, currency: str) -> str:
    return Money(micros, currency).format()


def _window(moment: datetime, granularity: str) -> datetime:
    moment = moment.astimezone(UTC)
    if granularity == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def _gpu_lines(
    organization: Organization, start: datetime, end: datetime, granularity: str
) -> list[tuple[datetime, dict[str, Any]]]:
    leases = list(
        Lease.objects.filter(
            organization=organization,
            managed=False,
            billed_until__gte=start,
            billed_until__lt=end,
            gpu_seconds_billed__gt=0,
        )
        .select_related("order")
        .order_by("pk")
    )
    replicas = _replicas(leases)
    lines = []
    for lease in leases:
        replica = replicas.get(lease.order.workload_id)
        if replica is not None:
            lines.append((_window(lease.billed_until, granularity), _minutes_line(lease, replica)))  # type: ignore[arg-type]
            continue
        hours = Decimal(lease.gpu_seconds_billed) / 3600
        lines.append(
            (
                _window(lease.billed_until, granularity),  # type: ignore[arg-type]
                {
                    "product_name": "GPU Clusters - GPU Hours",
                    "quantity": str(hours.quantize(Decimal("0.000001")).normalize()),
                    "unit_price": _decimal(
                        int(Decimal(lease.billed_micros) / hours) if hours else 0
                    ),
                    "cost": _amount(lease.billed_micros, lease.currency),
                    "attributes": {
                        "lease_id": str(lease.pk),
                        "order_id": str(lease.order_id),
                        "cluster_id": f"cl-{lease.order_id}",
                    },
                    "pricing_dimensions": {
                        "gpu_model": lease.gpu_model,
                        "kind": lease.kind,
                        "price_per_gpu_hour": _decimal(lease.price_per_gpu_hour_micros),
                    },
                    "applied_credit": {"type": "PREPAID"},
                },
            )
        )
    return lines


def _replicas(leases: list[Lease]) -> dict[str, Deployment]:
    """The dedicated endpoint replicas among ``leases``, by their orders' workload id."""
    ids = [
        lease.order.workload_id.removeprefix(DEDICATED_PREFIX)
        for lease in leases
        if lease.order.workload_id.startswith(DEDICATED_PREFIX)
    ]
    found = Deployment.objects.filter(public_id__in=ids).select_related(
        "dedicated", "dedicated__endpoint"
    )
    return {f"{DEDICATED_PREFIX}{replica.public_id}": replica for replica in found}


def _minutes_line(lease: Lease, replica: Deployment) -> dict[str, Any]:
    minutes = Decimal(lease.gpu_seconds_billed) / 60
    deployment = replica.dedicated
    assert deployment is not None
    return {
        "product_name": "Dedicated Endpoints - GPU Minutes",
        "quantity": str(minutes.quantize(Decimal("0.001")).normalize()),
        "unit_price": _decimal(int(Decimal(lease.billed_micros) / minutes) if minutes else 0),
        "cost": _amount(lease.billed_micros, lease.currency),
        "attributes": {
            "lease_id": str(lease.pk),
            "order_id": str(lease.order_id),
            "endpoint_id": deployment.endpoint.public_id,
            "deployment_id": deployment.public_id,
            "replica_id": replica.public_id,
        },
        "pricing_dimensions": {
            "gpu_model": lease.gpu_model,
            "gpu_count": str(lease.gpu_count),
            "price_per_gpu_hour": _decimal(lease.price_per_gpu_hour_micros),
        },
        "applied_credit": {"type": "PREPAID"},
    }


def _token_lines(
    organization: Organization, start: datetime, end: datetime, granularity: str
) -> list[tuple[datetime, dict[str, Any]]]:
    rows = (
        UsageEvent.objects.filter(
            buyer_id=organization.pk,
            type__in=list(TOKEN_TYPES),
            occurred_at__gte=start,
            occurred_at__lt=end,
        )
        .annotate(
            window=Trunc("occurred_at", granularity),
            model=KeyTextTransform("model", "dimensions"),
            training=KeyTextTransform("training_type", "dimensions"),
            tier=KeyTextTransform("service_tier", "dimensions"),
        )
        .values("window", "type", "model", "training", "tier")
        .annotate(quantity=Sum("quantity"))
        .order_by("window", "type", "model", "training", "tier")
    )
    lines = []
    for row in rows:
        window = row["window"].astimezone(UTC)
        dimensions = {"model": row["model"] or ""}
        if row["training"]:
            dimensions["training_type"] = row["training"]
        if row["tier"]:  # a batch's tokens, at the batch discount
            dimensions["service_tier"] = row["tier"]
        rate = rate_for(row["type"], dimensions, window)
        cost = rate_amount(int(row["quantity"]), rate.rate_micros, rate.unit)
        lines.append(
            (
                window,
                {
                    "product_name": TOKEN_TYPES[row["type"]],
                    "quantity": str(row["quantity"]),
                    "unit_price": str(Decimal(rate.rate_micros) / 1_000_000 / rate.unit),
                    "cost": _amount(cost, rate.currency),
                    "attributes": {"model": dimensions["model"]},
                    "pricing_dimensions": {k: str(v) for k, v in dimensions.items()}
                    | {"tier": rate.label},
                    "applied_credit": {"type": "PREPAID"},
                },
            )
        )
    return lines


def _cursor(month: str, granularity: str, after: datetime) -> str:
    raw = f"{month}|{granularity}|{after.isoformat()}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _after(cursor: str | None, month: str, granularity: str) -> datetime | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        found_month, found_granularity, at = (
            base64.urlsafe_b64decode(padded.encode()).decode().split("|")
        )
        moment = datetime.fromisoformat(at)
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise invalid("after is not a cursor this API gave", param="after") from error
    if (found_month, found_granularity) != (month, granularity):
        raise invalid("after was issued for another month or granularity", param="after")
    return moment


def usage_report(
    *,
    organization: Organization,
    month: str | None,
    granularity: str | None,
    after: str | None,
    limit_raw: str | None,
    currency: str,
    now: datetime,
) -> Report:
    granularity = granularity or "day"
    if granularity not in GRANULARITIES:
        raise invalid("granularity must be day or hour", param="granularity")
    try:
        limit = int(limit_raw) if limit_raw else 100
    except ValueError as error:
        raise invalid(
            f"limit must be a whole number from 1 to {LIMIT_MAX}", param="limit"
        ) from error
    if not 1 <= limit <= LIMIT_MAX:
        raise invalid(f"limit must be a whole number from 1 to {LIMIT_MAX}", param="limit")
    month_text, start, end = _month(month, now)
    after_window = _after(after, month_text, granularity)
    lines = _gpu_lines(organization, start, end, granularity) + _token_lines(
        organization, start, end, granularity
    )
    by_window: dict[datetime, list[dict[str, Any]]] = {}
    for window, line in lines:
        by_window.setdefault(window, []).append(line)
    step = timedelta(days=1) if granularity == "day" else timedelta(hours=1)
    ordered = sorted(by_window)
    earliest = ordered[0] if ordered else None
    latest = ordered[-1] + step if ordered else None
    if after_window is not None:
        ordered = [w for w in ordered if w > after_window]
    page, more = ordered[:limit], len(ordered) > limit
    windows = [
        {
            "date": window.date().isoformat(),
            "start_time": window.isoformat().replace("+00:00", "Z"),
            "end_time": (window + step).isoformat().replace("+00:00", "Z"),
            "line_items": by_window[window],
        }
        for window in page
    ]
    return Report(
        month=month_text,
        currency=currency,
        windows=windows,
        next_cursor=_cursor(month_text, granularity, page[-1]) if more else None,
        earliest=earliest,
        latest=latest,
    )
