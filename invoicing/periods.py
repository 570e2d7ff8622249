"""Billing periods and the keys of what is billed in them: a month's half-open UTC
bounds, the monthly and job invoice keys, the issuer, the grace and due delays,
and the transfer id of a job's minimum charge."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from django.conf import settings

from core.errors import InvalidInput

# --- periods and keys -------------------------------------------------------------


def month_bounds(period: date) -> tuple[datetime, datetime]:
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    end = datetime(period.year + period.month // 12, period.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def parse_period(text: str) -> date:
    try:
        year, month = (int(part) for part in text.split("-"))
        return date(year, month, 1)
    except ValueError:
        raise InvalidInput(
            f"period must be a month as YYYY-MM, not {text!r}", details={"field": "period"}
        ) from None


def monthly_key(organization_id: int, period: date, currency: str) -> str:
    return f"monthly:{organization_id}:{period:%Y-%m}:{currency}"


def job_key(organization_id: int, job: str, currency: str) -> str:
    return f"job:{organization_id}:{job}:{currency}"


def issuer() -> str:
    return settings.INVOICE_ISSUER


def grace() -> timedelta:
    return timedelta(days=settings.INVOICE_GRACE_DAYS)


def due_after() -> timedelta:
    return timedelta(days=settings.INVOICE_DUE_DAYS)


def minimum_transfer_id(organization_id: int, job: str) -> str:
    return f"ftmin:{organization_id}:{job}"
