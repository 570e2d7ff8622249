"""Amounts and quantities as people read them: decimal text with the currency (never
a float), GPU-seconds as GPU-hours, a duration in days and hours."""

from __future__ import annotations

from datetime import timedelta

from django import template

from core.money import Money

register = template.Library()


@register.filter
def money(amount_micros: int, currency: str) -> str:
    """``2500000|money:"USD"`` → ``2.50 USD`` (core.money's exact decimal text)."""
    return str(Money(int(amount_micros), currency))


@register.filter
def gpu_hours(gpu_seconds: int) -> str:
    """GPU-seconds as GPU-hours with one decimal, from integers (no float rounding)."""
    tenths = (int(gpu_seconds) * 10 + 1800) // 3600
    return f"{tenths // 10}.{tenths % 10}"


@register.filter
def days_hours(duration: timedelta) -> str:
    hours = int(duration.total_seconds()) // 3600
    days, hours = divmod(hours, 24)
    if days == 0 and hours == 0:
        return "under an hour"
    parts = ([f"{days} day{'s' if days != 1 else ''}"] if days else []) + (
        [f"{hours} hour{'s' if hours != 1 else ''}"] if hours else []
    )
    return " ".join(parts)


# The buyer console's pages, under which its section navigation shows.
CONSOLE_PAGES = frozenset(
    {
        "console",
        "top-up",
        "top-up-return",
        "auto-recharge",
        "payment-methods",
        "billing-details",
        "invoices",
        "invoice",
    }
)


@register.filter
def console_page(url_name: str) -> bool:
    """Whether the page named ``url_name`` is one of the buyer console's."""
    return url_name in CONSOLE_PAGES or url_name.startswith("console-")


@register.filter
def significant(value: float) -> str:
    """A measurement (a learning rate, a loss) to four significant digits: ``7.5e-05``,
    not ``0.00007500000000000001``."""
    return f"{float(value):.4g}"
