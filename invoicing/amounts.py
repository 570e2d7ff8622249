"""Money as an invoice shows it: an exact micro-unit amount rounded half-even to the
currency's minor unit (``cents``) and written as decimal text (``money_text``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.money import CURRENCIES, MICROS, check_currency

_MINOR_STEP = {currency: MICROS // 10**digits for currency, digits in CURRENCIES.items()}


def cents(amount_micros: int, currency: str) -> int:
    """``Money.round_to_minor`` without the Money objects (a close rounds ~20 per
    invoice): ``rate_amount(amount_micros, 1, step) * step``, inlined."""
    step = _MINOR_STEP.get(currency) or _MINOR_STEP[check_currency(currency)]
    quotient, remainder = divmod(amount_micros, step)
    if 2 * remainder > step or (2 * remainder == step and quotient % 2 == 1):
        quotient += 1
    return quotient * step


def money_text(amount_micros: int, currency: str) -> str:
    """``Money(amount_micros, currency).format()``, without the Money object: a
    document holds some twenty-five amounts."""
    whole, frac = divmod(abs(amount_micros), MICROS)
    digits = f"{frac:06d}".rstrip("0").ljust(CURRENCIES[currency], "0")
    return f"{'-' if amount_micros < 0 else ''}{whole}.{digits}"


def _money_texts(currency: str) -> Callable[[int], str]:
    """``money_text(m, currency)`` with the currency looked up once (a document's
    lines hold three amounts each)."""
    digits = CURRENCIES[currency]
    zeros = "0" * digits

    def text(micros: int) -> str:
        whole, frac = divmod(-micros if micros < 0 else micros, MICROS)
        sign = "-" if micros < 0 else ""
        if frac:
            return f"{sign}{whole}.{f'{frac:06d}'.rstrip('0'):0<{digits}}"
        return f"{sign}{whole}.{zeros}"

    return text


def _money_of(currency: str) -> Callable[[int], dict[str, Any]]:
    """``{"micros": m, "text": money_text(m, currency)}`` for the amounts of one
    document."""
    text = _money_texts(currency)
    return lambda micros: {"micros": micros, "text": text(micros)}


class _MoneyTexts(dict[int, str]):
    """``money_text(m, currency)`` of each distinct amount, made once: a close's
    document lines repeat a few unit prices tens of thousands of times."""

    def __init__(self, currency: str) -> None:
        super().__init__()
        self._text = _money_texts(currency)

    def __missing__(self, micros: int) -> str:
        text = self[micros] = self._text(micros)
        return text
