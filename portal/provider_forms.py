"""The provider portal's forms: sites, agent keys, offers. They check the shape of what
was typed (a price is decimal text in the platform's currency, a lease length is in
minutes); providers.services decides the rest, and its refusals come back beside the
field they name (``portal.forms.add_service_error`` through ``service_fields``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms
from django.conf import settings

from core.models import Organization
from core.money import Money, MoneyError
from providers import catalog
from providers import selectors as supply
from providers.models import Node, Offer

MAX_PRICE_MICROS = 10**12  # as the API's input serializer
REGION_HELP = "Lower-case letters, digits and dashes, e.g. us-east or eu-central."


class SiteCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="e.g. “Northlake Hall A”.")
    region = forms.RegexField(
        regex=r"^[a-z0-9][a-z0-9-]{0,63}$",
        max_length=64,
        help_text=REGION_HELP,
        error_messages={"invalid": f"Not a region name. {REGION_HELP}"},
    )
    country = forms.RegexField(
        regex=r"^[A-Za-z]{2}$",
        max_length=2,
        help_text="Two letters (ISO 3166-1), e.g. US or DE.",
        error_messages={"invalid": "Enter the country's two-letter code, e.g. US or DE."},
    )


class AgentKeyCreateForm(forms.Form):
    name = forms.CharField(
        max_length=90, help_text="The node it is for, e.g. “rack 1, node 3”. One key per node."
    )


class PriceField(forms.CharField):
    """A price per GPU-hour typed as decimal text (``2.49``), cleaned to integer
    micro-units of the platform's currency: exact, never a float."""

    def __init__(self, **kwargs: Any) -> None:
        currency = settings.TANDEM_CURRENCY
        kwargs.setdefault("label", f"Price per GPU-hour ({currency})")
        kwargs.setdefault("help_text", f"Decimal {currency}, e.g. 2.49; up to 6 decimal places.")
        kwargs.setdefault("max_length", 24)
        kwargs.setdefault("widget", forms.TextInput(attrs={"inputmode": "decimal"}))
        super().__init__(**kwargs)

    def clean(self, value: Any) -> int:  # type: ignore[override]
        text = super().clean(value)
        try:
            micros = Money.parse(text, settings.TANDEM_CURRENCY).amount_micros
        except MoneyError as error:
            raise forms.ValidationError(f"{error}: enter a price such as 2.49.") from None
        if micros <= 0:
            raise forms.ValidationError("The price must be above zero, e.g. 2.49.")
        if micros > MAX_PRICE_MICROS:
            raise forms.ValidationError(
                f"The price must be at most {Money(MAX_PRICE_MICROS, settings.TANDEM_CURRENCY)}."
            )
        return micros


def _utc(moment: datetime | None) -> datetime | None:
    """A ``datetime-local`` value is read as UTC, which the form says."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class NodeChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Node) -> str:  # type: ignore[override]
        return f"{obj.hostname} ({obj.site.name})" if obj.site else obj.hostname


class OfferCreateForm(forms.Form):
    node = NodeChoiceField(
        queryset=Node.objects.none(), empty_label=None, help_text="Where the GPUs are."
    )
    gpu_model = forms.ChoiceField(
        label="GPU model", choices=[(model.slug, model.name) for model in catalog.CATALOG]
    )
    gpu_count = forms.IntegerField(
        label="GPUs", min_value=1, max_value=1024, help_text="How many of the node's GPUs."
    )
    price = PriceField()
    kind = forms.ChoiceField(
        choices=[
            (Offer.Kind.ON_DEMAND, "On demand: leases run to their end"),
            (Offer.Kind.INTERRUPTIBLE, "Interruptible: cheaper, may be preempted with notice"),
        ],
        widget=forms.RadioSelect,
        initial=Offer.Kind.ON_DEMAND,
    )
    preemption_grace_seconds = forms.IntegerField(
        label="Notice before preemption (seconds)",
        required=False,
        min_value=0,
        max_value=86_400,
        help_text="Interruptible offers only, e.g. 120.",
    )
    min_lease_minutes = forms.IntegerField(
        label="Shortest lease (minutes)", min_value=1, max_value=10**6, initial=60
    )
    max_lease_minutes = forms.IntegerField(
        label="Longest lease (minutes)",
        required=False,
        min_value=1,
        max_value=10**6,
        help_text="Leave empty for no limit.",
    )
    window_start = forms.DateTimeField(
        label="Available from (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Leave empty for now.",
    )
    window_end = forms.DateTimeField(
        label="Available until (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Leave empty for open-ended.",
    )
    service_fields = {
        "node_id": "node",
        "price_per_gpu_hour_micros": "price",
        "min_lease_seconds": "min_lease_minutes",
        "max_lease_seconds": "max_lease_minutes",
    }

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        nodes = supply.nodes_for_org(organization=organization).prefetch_related(None)
        node_field = self.fields["node"]
        assert isinstance(node_field, forms.ModelChoiceField)
        node_field.queryset = nodes.order_by("hostname", "pk")
        # The models the organization's nodes have come first (the rest of the catalog
        # stays choosable: the service says which node lacks them).
        present = set(supply.gpu_models_for_org(organization=organization))
        models = sorted(catalog.CATALOG, key=lambda model: model.slug not in present)
        model_field = self.fields["gpu_model"]
        assert isinstance(model_field, forms.ChoiceField)
        model_field.choices = [(model.slug, model.name) for model in models]

    def service_arguments(self) -> dict[str, Any]:
        """The cleaned form as ``providers.services.offer_create``'s keywords."""
        data = self.cleaned_data
        max_minutes = data.get("max_lease_minutes")
        return {
            "node_id": data["node"].pk,
            "gpu_model": data["gpu_model"],
            "gpu_count": data["gpu_count"],
            "price_per_gpu_hour_micros": data["price"],
            "kind": data["kind"],
            "preemption_grace_seconds": data.get("preemption_grace_seconds"),
            "min_lease_seconds": data["min_lease_minutes"] * 60,
            "max_lease_seconds": None if max_minutes is None else max_minutes * 60,
            "window_start": _utc(data.get("window_start")),
            "window_end": _utc(data.get("window_end")),
        }


class OfferRepriceForm(forms.Form):
    price = PriceField(label=f"New price per GPU-hour ({settings.TANDEM_CURRENCY})")
    service_fields = {"price_per_gpu_hour_micros": "price"}


class OfferWithdrawForm(forms.Form):
    force = forms.BooleanField(
        label="End running leases now",
        required=False,
        help_text="Without it, running leases run to the end of their window. With it they "
        "end now and their buyers are not billed past this moment; it counts against the "
        "node's reliability.",
    )


OFFER_STATUS_CHOICES = [("", "All"), *Offer.Status.choices]


class OfferFilterForm(forms.Form):
    status = forms.ChoiceField(choices=OFFER_STATUS_CHOICES, required=False)


MAX_EARNINGS_DAYS = 366
EARNINGS_VIEWS = [("day", "By day"), ("node", "By node"), ("offer", "By offer")]


class EarningsPeriodForm(forms.Form):
    """A period of days (UTC, both ends included) to break earnings down over; this
    month so far when empty. ``by`` chooses the view a CSV download holds."""

    since = forms.DateField(
        required=False, label="From (UTC)", widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        required=False,
        label="Through (UTC)",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="the whole day counts",
    )
    by = forms.ChoiceField(required=False, choices=EARNINGS_VIEWS, widget=forms.HiddenInput)

    def __init__(self, *args: Any, today: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.today = today

    def clean(self) -> dict[str, Any]:
        super().clean()
        values = self.cleaned_data
        since = values.get("since") or self.today.replace(day=1)
        until = values.get("until") or self.today
        if "since" in self.errors or "until" in self.errors:
            return values
        if until < since:
            self.add_error("until", "The last day comes on or after the first.")
        elif (until - since).days >= MAX_EARNINGS_DAYS:
            self.add_error("until", f"Choose at most {MAX_EARNINGS_DAYS} days.")
        values["since"], values["until"] = since, until
        values["by"] = values.get("by") or "day"
        return values
