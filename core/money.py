"""Money as integer micro-units of one currency.

1 USD = 1,000,000 µUSD. There are no floats here: amounts are ``int`` and the
only rounding is half-even, done once, where an amount is rated.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

MICROS = 1_000_000
# The currencies Tandem keeps ledgers in, with the digits of their minor unit.
CURRENCIES: dict[str, int] = {"USD": 2, "EUR": 2, "GBP": 2}
# Postgres BIGINT; every amount must fit, and sums of a few must too.
MAX_AMOUNT_MICROS = 10**15  # one billion units of a currency


class MoneyError(ValueError):
    pass


def check_currency(currency: str) -> str:
    if currency not in CURRENCIES:
        raise MoneyError(f"unknown currency {currency!r}; supported: {', '.join(CURRENCIES)}")
    return currency


def rate_amount(quantity: int, rate_micros: int, unit: int) -> int:
    """``quantity * rate / unit`` rounded half-even to a micro-unit (integers only)."""
    if unit <= 0:
        raise MoneyError("unit must be positive")
    quotient, remainder = divmod(quantity * rate_micros, unit)
    twice = 2 * remainder
    if twice > unit or (twice == unit and quotient % 2 == 1):
        quotient += 1
    return quotient


@dataclass(frozen=True, slots=True)
class Money:
    amount_micros: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount_micros, bool) or not isinstance(self.amount_micros, int):
            raise MoneyError("amount_micros must be an integer")
        check_currency(self.currency)

    @classmethod
    def parse(cls, text: str, currency: str) -> Money:
        """Parse a decimal string such as ``"25.00"`` exactly (at most 6 decimals)."""
        try:
            value = Decimal(str(text).strip())
        except InvalidOperation:
            raise MoneyError(f"{text!r} is not a decimal amount") from None
        if not value.is_finite():
            raise MoneyError(f"{text!r} is not a finite amount")
        micros = value * MICROS
        if micros != micros.to_integral_value():
            raise MoneyError(f"{text!r} has more than 6 decimal places")
        amount = int(micros)
        if abs(amount) > MAX_AMOUNT_MICROS:
            raise MoneyError(f"{text!r} is too large")
        return cls(amount, currency)

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError("can only combine Money with Money")
        if other.currency != self.currency:
            raise MoneyError(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_micros + other.amount_micros, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_micros - other.amount_micros, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_micros, self.currency)

    def round_to_minor(self) -> Money:
        """Round half-even to the currency's minor unit (cents for USD)."""
        step = MICROS // 10 ** CURRENCIES[self.currency]
        return Money(rate_amount(self.amount_micros, 1, step) * step, self.currency)

    def to_decimal(self) -> Decimal:
        return Decimal(self.amount_micros) / MICROS

    def format(self) -> str:
        """Exact decimal text, at least the minor unit's digits: ``"25.00"``, ``"0.000125"``."""
        sign = "-" if self.amount_micros < 0 else ""
        whole, frac = divmod(abs(self.amount_micros), MICROS)
        digits = f"{frac:06d}".rstrip("0").ljust(CURRENCIES[self.currency], "0")
        return f"{sign}{whole}.{digits}"

    def __str__(self) -> str:
        return f"{self.format()} {self.currency}"
