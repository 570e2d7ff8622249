"""The portal's forms: they parse and check the shape of what a person typed; the
services decide everything else, and their refusals come back onto the form, beside
the field they name (``add_service_error``)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm

from core.errors import ApplicationError
from core.models import Membership, Organization

ROLE_CHOICES = Membership.Role.choices
KIND_CHOICES = [
    (Organization.Kind.BUYER, "Buyer: run fine-tunes, inference and GPU leases"),
    (Organization.Kind.PROVIDER, "Provider: list GPUs and earn from them"),
    (Organization.Kind.BOTH, "Both"),
]


def add_service_error(form: forms.Form, error: ApplicationError) -> None:
    """A service's refusal, shown beside the field it names (``details["field"]``, or
    each of ``details["fields"]``), renamed through the form's ``service_fields`` where
    the names differ, or above the form, in the service's own words, when the form has
    no such field."""
    renamed = getattr(form, "service_fields", {})
    named = error.details.get("fields")
    if isinstance(named, dict) and named:
        # The supply side's services name theirs as {"field": ["message", ...]}.
        for field, messages in named.items():
            field = renamed.get(field, field)
            if field not in form.fields:
                form.add_error(None, error.message)
                continue
            for message in messages if isinstance(messages, list) else [messages]:
                form.add_error(field, str(message))
        return
    # The /v1/ surface's services name theirs "param", as OpenAI's errors do.
    field = error.details.get("field") or error.details.get("param")
    field = renamed.get(field, field)
    form.add_error(field if field in form.fields else None, error.message)


class SignInForm(AuthenticationForm):
    """Django's sign-in form; the username is the person's email."""

    username = forms.EmailField(
        label="Email", widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True})
    )


class SignUpForm(forms.Form):
    email = forms.EmailField(widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    organization_name = forms.CharField(max_length=200, label="Organization name")
    kind = forms.ChoiceField(
        choices=KIND_CHOICES,
        widget=forms.RadioSelect,
        label="What will your organization do?",
        initial=Organization.Kind.BUYER,
    )
    # core.services names its fields "name" (the organization's) and "email".
    service_fields = {"name": "organization_name"}

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        password_validation.validate_password(password)
        return password


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Where the key is used, e.g. “CI runner”.")
    # Least privilege unless asked, as the API does.
    role = forms.ChoiceField(
        choices=ROLE_CHOICES,
        initial=Membership.Role.MEMBER,
        help_text="What the key may do: member for scripts, admin to manage keys and team.",
    )


class InviteForm(forms.Form):
    email = forms.EmailField(widget=forms.EmailInput(attrs={"autocomplete": "off"}))
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Membership.Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLE_CHOICES)


class OrganizationSwitchForm(forms.Form):
    """One of the person's own organizations (their memberships are the choices)."""

    organization = forms.TypedChoiceField(coerce=int, label="Organization")

    def __init__(self, *args: object, memberships: list[Membership], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.memberships = {m.organization_id: m for m in memberships}
        field = self.fields["organization"]
        assert isinstance(field, forms.TypedChoiceField)
        field.choices = [
            (m.organization_id, f"{m.organization.name} ({m.role})") for m in memberships
        ]

    def clean_organization(self) -> Membership:
        return self.memberships[self.cleaned_data["organization"]]


class TwoFactorCodeForm(forms.Form):
    """A code from the person's authenticator app (or, except while setting it up,
    one of their backup codes). core.two_factor checks it and throttles wrong ones."""

    code = forms.CharField(
        max_length=16,
        label="Code",
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "autocapitalize": "off", "spellcheck": "false"}
        ),
        help_text="The 6 digits your authenticator app shows now, or one of your backup codes.",
    )

    def __init__(self, *args: Any, setting_up: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if setting_up:
            self.fields["code"].help_text = "The 6 digits your authenticator app shows now."
            self.fields["code"].widget.attrs.update({"inputmode": "numeric", "maxlength": "6"})
