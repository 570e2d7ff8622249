"""Fields and query-parameter readers the apps' APIs share: money and decimal text,
debit/credit sides, list errors that name their place, ids, datetimes and currencies
from the query string, and the actor written on what a caller changes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    extend_schema_field,
)
from rest_framework import serializers
from rest_framework.fields import empty
from rest_framework.request import Request
from rest_framework.settings import api_settings

from core.converters import BIGINT_MAX
from core.errors import InvalidInput
from core.money import CURRENCIES, Money, MoneyError
from core.tenancy import Caller

MAX_REASON_LENGTH = 500
# Signed decimal digits, no exponent: "1e30" or "0x10" is not an amount anyone types.
DECIMAL_TEXT = re.compile(r"^[+-]?\d{1,40}(?:\.\d{1,40})?$")
MAX_DB_ID = BIGINT_MAX
SIDE_NAMES = {"D": "debit", "C": "credit"}


# --- fields -----------------------------------------------------------------


@extend_schema_field(OpenApiTypes.STR)
class MoneyTextField(serializers.Field):
    """Read only: ``<micros_attr>`` of the object as exact decimal text in the
    object's ``currency`` (``"25.00"``, ``"0.000125"``); null stays null."""

    def __init__(self, micros_attr: str, **kwargs: Any) -> None:
        self.micros_attr = micros_attr
        kwargs.update(source="*", read_only=True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str | None:
        micros = getattr(value, self.micros_attr)
        return None if micros is None else Money(micros, value.currency).format()


@extend_schema_field({"type": "string", "enum": ["debit", "credit"]})
class SideField(serializers.Field):
    """``"debit"`` / ``"credit"`` on the wire, ``"D"`` / ``"C"`` in the ledger."""

    default_error_messages = {"invalid": 'must be "debit" or "credit"'}

    def to_internal_value(self, data: Any) -> str:
        if data == "debit":
            return "D"
        if data == "credit":
            return "C"
        self.fail("invalid")

    def to_representation(self, value: Any) -> str:
        return SIDE_NAMES.get(value, value)


# Documented without an enum: drf-spectacular names enums after fields, and the same
# set under two names ("side", "normal_side") is a schema warning.
@extend_schema_field({"type": "string", "example": "credit"})
class NormalSideField(SideField):
    """``"debit"`` or ``"credit"``: the side on which the balance grows."""


@extend_schema_field({"type": "string", "example": "12.34"})
class DecimalTextField(serializers.Field):
    """Input: an amount as decimal text. Checked for shape here; turned into
    micro-units (``Money.parse``) where the currency is known."""

    default_error_messages = {
        "type": 'must be a decimal string such as "12.34", not a JSON {kind}',
        "format": 'must be a decimal string such as "12.34" (digits, an optional point, '
        "no exponent)",
        "null_characters": "must not contain NUL characters",
    }

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("type", kind=type(data).__name__)
        if "\x00" in data:
            self.fail("null_characters")
        text = data.strip()
        if not DECIMAL_TEXT.match(text):
            self.fail("format")
        return text


def parse_amount(text: str, currency: str, *, allow_zero: bool = False) -> int:
    """Micro-units of ``text`` in ``currency``; a MoneyError says what is wrong."""
    amount = Money.parse(text, currency).amount_micros  # at most 6 places, bounded
    if amount < 0 or (amount == 0 and not allow_zero):
        raise MoneyError("must not be negative" if allow_zero else "must be positive")
    return amount


# --- input serializers ------------------------------------------------------


class PlacedListSerializer(serializers.ListSerializer):
    """Errors name their place the way the API does elsewhere: ``legs`` for the list
    as a whole (not DRF's ``legs.non_field_errors``) and ``legs[1].side`` for an item
    (DRF 3.18 keys item errors by index, which core.errors would spell ``legs.1``)."""

    def run_validation(self, data: Any = empty) -> Any:
        try:
            return super().run_validation(data)
        except serializers.ValidationError as exc:
            detail: Any = exc.detail
            whole = api_settings.NON_FIELD_ERRORS_KEY
            if isinstance(detail, dict) and set(detail) == {whole}:
                raise serializers.ValidationError(detail[whole]) from None
            if isinstance(detail, dict) and all(isinstance(k, int) for k in detail):
                items = [detail.get(index, {}) for index in range(max(detail) + 1)]
                raise serializers.ValidationError(items) from None
            raise


# --- query parameters -------------------------------------------------------


def query_datetime(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = parse_datetime(raw)
    except ValueError:
        value = None
    if value is None:
        raise InvalidInput(
            f"{name} must be an ISO 8601 date and time, e.g. 2025-01-31T00:00:00Z",
            details={"parameter": name},
        )
    if value.tzinfo is None:
        raise InvalidInput(
            f"{name} must carry a time zone (Z or +00:00): periods are in UTC",
            details={"parameter": name},
        )
    return value.astimezone(UTC)


def query_currency(request: Request) -> str | None:
    raw = request.query_params.get("currency")
    if raw is None:
        return None
    if raw not in CURRENCIES:
        raise InvalidInput(
            f"currency must be one of {', '.join(sorted(CURRENCIES))}",
            details={"parameter": "currency"},
        )
    return raw


def actor_for(caller: Caller) -> str:
    return f"org:{caller.organization.pk}:{caller.rate_limit_key}"


# === the price book, invoices, credit notes, billing profiles, statements ===========
#
# Who may do what: anyone (no key needed) reads the public prices in force; members
# ask for a fine-tune estimate, read their organization's invoices, credit notes,
# billing profile and (providers) statements; the operator's finance staff read every
# organization's, schedule price changes, set billing profiles and move invoices
# along their lifecycle. Another organization's ids answer 404.


class MoneyTextBase(serializers.Field):
    """Read only: ``micros_attr`` of the object as exact decimal text in the currency
    found at the dotted ``currency_path`` (lines and entries carry their invoice's)."""

    def __init__(self, micros_attr: str, currency_path: str = "currency", **kwargs: Any) -> None:
        self.micros_attr = micros_attr
        self.currency_path = currency_path
        kwargs.update(source="*", read_only=True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str | None:
        micros = getattr(value, self.micros_attr)
        currency: Any = value
        for part in self.currency_path.split("."):
            currency = getattr(currency, part)
        return None if micros is None else Money(micros, currency).format()


MoneyText = extend_schema_field({"type": "string", "example": "12.34", "nullable": True})(
    MoneyTextBase
)


class ChoiceText(serializers.CharField):
    """A plain string in the schema: an enum here would collide with other apps'
    enums of the same field name (``status``, ``kind``) and warn."""
