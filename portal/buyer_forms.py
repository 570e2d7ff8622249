"""The buyer console's money forms: a top-up's amount, the auto-recharge setting.

They parse decimal text into integer micro-units of the platform currency and check
what a form can (a choice was made, the text is an amount); the bounds and the rules
are billing.payments.services' (``top_up_check_amount``, ``auto_recharge_set``),
whose refusals come back beside the field they name (portal.forms.add_service_error).
"""

from __future__ import annotations

import uuid

from django import forms
from django.conf import settings

from core.money import Money, MoneyError

# Preset top-ups, in whole units of the platform currency.
PRESETS = ("25", "50", "100", "500")
CUSTOM = "custom"


def micros_of(text: str, *, currency: str) -> int:
    """Decimal text (``"50"``, ``"49.99"``) as micro-units; a ValidationError that
    says what was wrong otherwise."""
    try:
        return Money.parse(text.strip(), currency).amount_micros
    except MoneyError as error:
        raise forms.ValidationError(f"Enter an amount like 25.00 ({error}).") from None


def bounds_text(currency: str) -> str:
    low = Money(settings.TOPUP_MINIMUM_MICROS, currency)
    high = Money(settings.TOPUP_MAXIMUM_MICROS, currency)
    return f"from {low} to {high}"


class TopUpForm(forms.Form):
    """A preset amount or a custom one. ``request_key`` makes a resubmitted form (a
    double click, the back button) find the same top-up instead of paying twice."""

    preset = forms.ChoiceField(widget=forms.RadioSelect, label="Amount")
    custom_amount = forms.CharField(
        required=False,
        max_length=20,
        label="Custom amount",
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
    )
    request_key = forms.CharField(widget=forms.HiddenInput, max_length=64)
    # billing.payments.services names the amount "amount".
    service_fields = {"amount": "custom_amount"}

    def __init__(self, *args: object, currency: str, **kwargs: object) -> None:
        kwargs.setdefault("initial", {"preset": "50", "request_key": uuid.uuid4().hex})
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.currency = currency
        preset = self.fields["preset"]
        assert isinstance(preset, forms.ChoiceField)
        preset.choices = [
            *((p, f"{p}.00 {currency}") for p in PRESETS),
            (CUSTOM, "Another amount"),
        ]
        self.fields[
            "custom_amount"
        ].help_text = f"With “Another amount”: {bounds_text(currency)}, e.g. 75.00."

    def clean(self) -> dict:
        data = super().clean() or {}
        preset = data.get("preset")
        text = (data.get("custom_amount") or "").strip()
        if preset == CUSTOM:
            if not text:
                self.add_error("custom_amount", "Enter the amount to add, or choose one above.")
                return data
            try:
                data["amount_micros"] = micros_of(text, currency=self.currency)
            except forms.ValidationError as error:
                self.add_error("custom_amount", error)
                return data
            if data["amount_micros"] <= 0:
                self.add_error("custom_amount", "Enter an amount above zero.")
        elif preset:
            data["amount_micros"] = micros_of(preset, currency=self.currency)
        return data


class AutoRechargeForm(forms.Form):
    enabled = forms.BooleanField(
        required=False,
        label="Recharge automatically",
        help_text="Charge the saved payment method when available credit falls below the "
        "threshold.",
    )
    threshold = forms.CharField(
        max_length=20,
        label="When credit falls below",
        widget=forms.TextInput(attrs={"inputmode": "decimal"}),
    )
    amount = forms.CharField(
        max_length=20,
        label="Add this much",
        widget=forms.TextInput(attrs={"inputmode": "decimal"}),
    )
    daily_cap = forms.CharField(
        max_length=20,
        label="At most this much a day",
        widget=forms.TextInput(attrs={"inputmode": "decimal"}),
        help_text="Across all recharges in one UTC day; at least the recharge amount.",
    )

    def __init__(self, *args: object, currency: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.currency = currency
        self.fields["amount"].help_text = f"One recharge: {bounds_text(currency)}."
        for name in ("threshold", "amount", "daily_cap"):
            self.fields[name].label = f"{self.fields[name].label} ({currency})"

    def _micros(self, name: str) -> int:
        return micros_of(self.cleaned_data[name], currency=self.currency)

    def clean_threshold(self) -> int:
        return self._micros("threshold")

    def clean_amount(self) -> int:
        return self._micros("amount")

    def clean_daily_cap(self) -> int:
        return self._micros("daily_cap")


class BillingDetailsForm(forms.Form):
    """Who the buyer's invoices are addressed to. The shape of a tax id (its
    country's VAT format) is invoicing's rule (``billing_details_set``); its refusal
    comes back beside the field."""

    legal_name = forms.CharField(
        max_length=200,
        label="Legal name",
        help_text="The registered name of your company, as your accounts book it.",
        widget=forms.TextInput(attrs={"autocomplete": "organization"}),
    )
    address = forms.CharField(
        max_length=1000,
        label="Billing address",
        help_text="Street, city, postal code and country, one per line.",
        widget=forms.Textarea(attrs={"rows": 4, "autocomplete": "street-address"}),
    )
    tax_id = forms.CharField(
        max_length=64,
        required=False,
        label="VAT or tax id",
        help_text="Optional. An EU or UK VAT number starts with its country code (DE123456789).",
    )
