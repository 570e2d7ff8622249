"""The finance pages' forms: the journal's and the invoices' filters, closing a month,
requesting an export. Each one's errors render beside its fields; a service's own
refusal goes beside the field it names (``portal.forms.add_service_error``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms

from core.errors import NotFound
from core.money import CURRENCIES
from exports.models import FinanceExport
from invoicing.models import Invoice
from ledger.models import Account

ANY = [("", "Any")]


def _month(text: str) -> date:
    try:
        year, month = (int(part) for part in text.split("-"))
        return date(year, month, 1)
    except ValueError:
        raise forms.ValidationError("Enter a month as YYYY-MM, e.g. 2026-10.") from None


def month_in_url(text: str, *, today: date) -> date:
    """A month named in a URL (``2026-10``); one that is not a month, or has not
    begun, is no page (404)."""
    try:
        month = _month(text)
    except forms.ValidationError:
        raise NotFound(f"no month {text!r}: months are YYYY-MM") from None
    if month > today:
        raise NotFound(f"{text} has not begun yet")
    return month


class MonthField(forms.CharField):
    """A month as ``YYYY-MM`` (an ``<input type="month">``), cleaned to its first day."""

    widget = forms.TextInput(attrs={"type": "month", "placeholder": "YYYY-MM"})

    def to_python(self, value: Any) -> date | None:  # type: ignore[override]
        text = super().to_python(value)
        return _month(text) if text else None


class JournalFilterForm(forms.Form):
    account = forms.IntegerField(required=False, min_value=1, label="Account id")
    since = forms.DateField(
        required=False, label="From (UTC)", widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        required=False,
        label="Through (UTC)",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="the whole day counts",
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        values = self.cleaned_data
        since, until = values.get("since"), values.get("until")
        if since and until and until < since:
            self.add_error("until", "The last day comes on or after the first.")
        return values

    def bounds(self) -> tuple[datetime | None, datetime | None]:
        since, until = self.cleaned_data.get("since"), self.cleaned_data.get("until")
        return (
            datetime.combine(since, time.min, tzinfo=UTC) if since else None,
            datetime.combine(until + timedelta(days=1), time.min, tzinfo=UTC) if until else None,
        )


class AccountFilterForm(forms.Form):
    kind = forms.ChoiceField(required=False, choices=ANY + list(Account.Kind.choices))


class InvoiceFilterForm(forms.Form):
    status = forms.ChoiceField(required=False, choices=ANY + list(Invoice.Status.choices))
    period = MonthField(required=False, label="Period", help_text="YYYY-MM")


class PeriodCloseForm(forms.Form):
    """Close a month that has ended: refresh its drafts, finalize them (now, or once
    its grace period is over), write the providers' statements."""

    period = MonthField(label="Month", help_text="a month that has ended, YYYY-MM")
    finalize = forms.BooleanField(
        required=False,
        label="Finalize now, even within the grace period",
        help_text="otherwise invoices are finalized only once the grace period has ended",
    )
    confirm = forms.BooleanField(
        label="I have checked the month: close it",
        error_messages={"required": "Tick this to confirm the close."},
    )

    def __init__(self, *args: Any, now: datetime, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.now = now

    def clean_period(self) -> date:
        period: date = self.cleaned_data["period"]
        current = self.now.date().replace(day=1)
        if period >= current:
            raise forms.ValidationError(
                f"{period:%Y-%m} has not ended yet: only a past month can be closed."
            )
        return period


class ExportRequestForm(forms.Form):
    """A finance export: which report, which format, and the parameters its kind
    takes (exports.services.PARAMETERS; one it does not take is refused beside it)."""

    kind = forms.ChoiceField(choices=FinanceExport.Kind.choices)
    format = forms.ChoiceField(
        choices=[("csv", "CSV"), ("parquet", "Parquet"), ("xlsx", "XLSX (Excel)")]
    )
    period = MonthField(required=False, help_text="YYYY-MM; for most kinds")
    as_of = forms.DateField(
        required=False,
        label="As of (UTC)",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="through the end of this day; today when empty",
    )
    organization = forms.IntegerField(
        required=False, min_value=1, label="Organization id", help_text="usage detail only"
    )

    def params(self) -> dict[str, Any]:
        values = self.cleaned_data
        params: dict[str, Any] = {}
        if values.get("period"):
            params["period"] = f"{values['period']:%Y-%m}"
        if values.get("as_of"):
            params["as_of"] = values["as_of"].isoformat()
        if values.get("organization"):
            params["organization"] = values["organization"]
        return params


class StatementFilterForm(forms.Form):
    organization = forms.IntegerField(required=False, min_value=1, label="Provider id")


class AgingForm(forms.Form):
    as_of = forms.DateField(
        required=False,
        label="As of (UTC)",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="through the end of this day; now when empty",
    )


class CurrencyForm(forms.Form):
    currency = forms.ChoiceField(
        required=False, choices=[(code, code) for code in sorted(CURRENCIES)]
    )


class InvoiceIssueForm(forms.Form):
    """Finalize a draft now: it is numbered and its amounts frozen."""

    prefix = "issue"  # three forms share the invoice's page: their ids must differ

    confirm = forms.BooleanField(
        label="Issue this invoice: number it and freeze its amounts",
        error_messages={"required": "Tick this to confirm the invoice is to be issued."},
    )


class InvoiceVoidForm(forms.Form):
    prefix = "void"
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="kept on the invoice's record and the journal entry",
        error_messages={"required": "Say why the invoice is voided."},
    )
    confirm = forms.BooleanField(
        label="Void this invoice: reverse everything it posted",
        error_messages={"required": "Tick this to confirm the invoice is to be voided."},
    )


class InvoiceMarkPaidForm(forms.Form):
    prefix = "paid"
    payment_reference = forms.CharField(
        max_length=255,
        label="Payment reference",
        help_text="the bank transfer's reference, or where else it was paid",
        error_messages={"required": "Give the payment's reference."},
    )
    confirm = forms.BooleanField(
        label="Record that everything still owed was paid",
        error_messages={"required": "Tick this to confirm the payment."},
    )
