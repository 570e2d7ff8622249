"""The buyer console's forms for its work: the usage filter, a file upload, a new
fine-tune job. They check what a form can (a date is a date, a choice was made); the
rules are the services' (marketplace.workloads.services: the same checks the API's
/v1/files and /v1/fine_tuning/jobs make), whose refusals come back beside the field
they name (portal.forms.add_service_error)."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Any

from django import forms

from core.money import Money, MoneyError
from marketplace.selectors import MAX_DAYS, PRODUCTS

PURPOSES = [
    ("fine-tune", "Fine-tune: a training or validation dataset"),
    ("eval", "Evaluation dataset"),
]


class UsageFilterForm(forms.Form):
    """A period of whole UTC days (this month so far unless asked), a product, a model."""

    since = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        label="To (inclusive)", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    product = forms.ChoiceField(
        required=False,
        choices=[("", "All products"), *((key, name) for key, (name, _) in PRODUCTS.items())],
    )
    model = forms.CharField(
        required=False,
        max_length=255,
        help_text="A model's exact name (a GPU model for GPU time); empty for all.",
    )

    def __init__(self, *args: Any, today: date, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.today = today

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        until = cleaned.get("until") or self.today
        since = cleaned.get("since") or until.replace(day=1)
        if "since" in self.errors or "until" in self.errors:
            return cleaned
        if since > until:
            self.add_error("until", "The end of the period must not be before its start.")
        elif (until - since) >= timedelta(days=MAX_DAYS):
            self.add_error("since", f"Choose a period of at most {MAX_DAYS} days.")
        cleaned.update(since=since, until=until)
        return cleaned


class FileUploadForm(forms.Form):
    purpose = forms.ChoiceField(choices=PURPOSES, initial="fine-tune")
    file = forms.FileField(
        help_text="JSON lines (.jsonl) or Parquet; CSV for evaluation only. Each line is "
        "checked as the API checks an upload: a bad line is named with its number."
    )


class JobCreateForm(forms.Form):
    """A fine-tune of a base model on one of the organization's checked files; the
    estimate is shown before the job is started (``action`` says which was asked)."""

    model = forms.ChoiceField(label="Base model")
    training_file = forms.ChoiceField(label="Training file")
    training_type = forms.ChoiceField(
        label="Training type",
        choices=[("lora", "LoRA (adapter)"), ("full", "Full weights")],
        initial="lora",
    )
    n_epochs = forms.IntegerField(
        label="Epochs",
        required=False,
        min_value=1,
        help_text="Passes over the training file; empty for the size-based default.",
    )
    suffix = forms.CharField(
        required=False,
        max_length=40,
        help_text="Part of the fine-tuned model's name: letters, digits, '-', '_' or '.'.",
    )
    # One job per form shown: a resubmitted form (a double click, the back button)
    # finds the job it started instead of starting another.
    request_key = forms.CharField(widget=forms.HiddenInput, max_length=64)

    def __init__(
        self, *args: Any, models: list[str], files: list[tuple[str, str]], **kwargs: Any
    ) -> None:
        initial = kwargs.setdefault("initial", {})
        initial.setdefault("request_key", uuid.uuid4().hex)
        super().__init__(*args, **kwargs)
        model_field = self.fields["model"]
        file_field = self.fields["training_file"]
        assert isinstance(model_field, forms.ChoiceField)
        assert isinstance(file_field, forms.ChoiceField)
        model_field.choices = [(name, name) for name in models]
        file_field.choices = files


class OrderPlaceForm(forms.Form):
    """Raw GPUs on the market: one model, how many on one node, for how long (or
    until cancelled), on demand or interruptible, and the most the buyer pays per
    GPU-hour. marketplace.services.order_place checks the bounds and the credit."""

    gpu_model = forms.ChoiceField(label="GPU model")
    gpu_count = forms.IntegerField(label="GPUs", min_value=1, initial=1, help_text="On one node.")
    length = forms.ChoiceField(
        label="How long",
        choices=[("fixed", "For a set number of hours"), ("open", "Until I cancel it")],
        widget=forms.RadioSelect,
        initial="fixed",
    )
    duration_hours = forms.IntegerField(
        label="Hours",
        min_value=1,
        required=False,
        initial=1,
        help_text="With “For a set number of hours”.",
    )
    interruptible = forms.BooleanField(
        required=False,
        label="Interruptible",
        help_text="Cheaper capacity that a provider may reclaim with notice.",
    )
    max_price = forms.CharField(
        max_length=20,
        label="Most you pay per GPU-hour",
        widget=forms.TextInput(attrs={"inputmode": "decimal"}),
    )
    # One order per form shown: a resubmitted form (a double click, the back button)
    # finds the order it placed; the key is claimed as an API client's
    # Idempotency-Key is (core.services.idempotent_request_claim).
    request_key = forms.CharField(widget=forms.HiddenInput, max_length=64)
    # marketplace.services names its fields by the order's own names.
    service_fields = {
        "gpus_per_node": "gpu_count",
        "gpu_models": "gpu_model",
        "gpu_models[0]": "gpu_model",
        "duration_seconds": "duration_hours",
        "limit_price_per_gpu_hour_micros": "max_price",
    }

    def __init__(self, *args: Any, models: list[tuple[str, str]], currency: str, **kwargs: Any):
        initial = kwargs.setdefault("initial", {})
        initial.setdefault("request_key", uuid.uuid4().hex)
        super().__init__(*args, **kwargs)
        self.currency = currency
        field = self.fields["gpu_model"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = models
        self.fields["max_price"].label = f"Most you pay per GPU-hour ({currency})"

    def clean_max_price(self) -> int:
        text = self.cleaned_data["max_price"].strip()
        try:
            micros = Money.parse(text, self.currency).amount_micros
        except MoneyError as error:
            raise forms.ValidationError(f"Enter a price like 2.50 ({error}).") from None
        if micros <= 0:
            raise forms.ValidationError("Enter a price above zero.")
        return micros

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("length") == "fixed" and not data.get("duration_hours"):
            self.add_error(
                "duration_hours", "Enter the number of hours, or choose “Until I cancel it”."
            )
        return data
