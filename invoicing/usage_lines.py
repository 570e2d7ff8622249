"""Usage lines: the month's usage accruals grouped into lines by product, model and
price."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from decimal import Decimal

from core.errors import InvalidInput
from core.models import Organization
from core.money import Money, rate_amount
from invoicing.lines import _Line
from invoicing.models import Invoice, UsageAccrual
from pricing.selectors import BPS, SECONDS_PER_HOUR, TOKENS_UNIT


def _accruals(
    organization: Organization, currency: str, as_of: int, *, period: date | None, job: str | None
):
    query = UsageAccrual.objects.filter(
        buyer_id=organization.pk, currency=currency, batch_position__lte=as_of
    ).exclude(transfer_id="")
    if job is not None:
        return query.filter(product="fine_tune", subject=job)
    if period is None:
        raise InvalidInput("a monthly invoice needs its period", details={"field": "period"})
    query = query.filter(period=period)
    invoiced_jobs = _jobs_invoiced_alone(organization, currency)
    if invoiced_jobs:
        query = query.exclude(product="fine_tune", subject__in=invoiced_jobs)
    return query


def _jobs_invoiced_alone(organization: Organization, currency: str) -> list[str]:
    return list(
        Invoice.objects.filter(organization=organization, currency=currency, kind=Invoice.Kind.JOB)
        .exclude(status=Invoice.Status.DRAFT)
        .values_list("job", flat=True)
    )


def _usage_line_key(a: UsageAccrual) -> tuple:
    if a.product == "fine_tune":
        return ("fine_tune", a.subject, a.model, a.training_type, a.rate_micros)
    if a.product == "inference":
        return ("inference", a.model, a.usage_type.split(".", 1)[1], a.rate_micros)
    return ("gpu_lease", a.gpu_model, a.rate_micros, a.fee_bps)


def _usage_line_new(a: UsageAccrual, currency: str) -> _Line:
    """The empty line an accrual's key opens (made once per key, not per accrual)."""
    if a.product == "fine_tune":
        return _Line(
            "fine_tune",
            f"Fine-tune {a.subject} · {a.model} · {a.training_type} "
            f"(training and evaluation tokens)",
            "tokens",
            TOKENS_UNIT,
            a.rate_micros,
            job=a.subject,
            model=a.model,
        )
    if a.product == "inference":
        kind = a.usage_type.split(".", 1)[1]
        return _Line(
            "inference",
            f"Inference · {a.model} · {kind} tokens",
            "tokens",
            TOKENS_UNIT,
            a.rate_micros,
            model=a.model,
        )
    buyer_rate = a.rate_micros + rate_amount(a.rate_micros, a.fee_bps, BPS)
    return _Line(
        "gpu_lease",
        f"GPU lease · {a.gpu_model or 'GPU'} at "
        f"{Money(a.rate_micros, currency).format()}/GPU-hour "
        f"+ {Decimal(a.fee_bps) / 100}% platform fee",
        "gpu_seconds",
        SECONDS_PER_HOUR,
        buyer_rate,
        gpu_model=a.gpu_model,
    )


def _usage_lines(
    accruals: Iterable[UsageAccrual],
    currency: str,
    opened: dict[tuple, _Line] | None = None,
) -> dict[tuple, _Line]:
    """The usage lines of these accruals. ``opened``: the empty line of each key met
    so far (shared by the orgs of a close, whose lines repeat the same few keys)."""
    if opened is None:
        opened = {}
    lines: dict[tuple, _Line] = {}
    for a in accruals:
        key = _usage_line_key(a)
        line = lines.get(key)
        if line is None:
            empty = opened.get(key)
            if empty is None:
                empty = opened[key] = _usage_line_new(a, currency)
            line = lines[key] = empty.copy()
        line.quantity += a.quantity
        line.exact_micros += a.amount_micros
        line.entries[a.transfer_id] = line.entries.get(a.transfer_id, 0) + a.amount_micros
    return lines
