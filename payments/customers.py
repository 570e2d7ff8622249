"""A buyer's Stripe customer and its saved payment method (the one charged directly,
by auto-recharge and by invoice collection)."""

from __future__ import annotations

import stripe
from django.utils import timezone

from core.errors import InvalidInput
from core.models import Organization
from payments.common import _stripe_message
from payments.models import StripeCustomer
from payments.stripe_client import PaymentFailed, is_transient, stripe_client, unavailable

# --- customers and saved payment methods ------------------------------------------


def customer_ensure(*, organization: Organization) -> StripeCustomer:
    """The buyer org's Stripe customer, created the first time (Stripe's idempotency
    key is the org's id, so two racing first calls make one customer)."""
    found = StripeCustomer.objects.filter(organization=organization).first()
    if found is not None:
        return found
    client = stripe_client()
    try:
        customer = client.v1.customers.create(
            params={
                "name": organization.name,
                "metadata": {"tandem_organization": str(organization.pk)},
            },
            options={"idempotency_key": f"tandem-customer-{organization.pk}"},
        )
    except stripe.StripeError as exc:
        raise unavailable(exc) from exc
    row, _ = StripeCustomer.objects.get_or_create(
        organization=organization, defaults={"customer_id": customer.id}
    )
    return row


def payment_method_save(*, organization: Organization, payment_method_id: str) -> StripeCustomer:
    """Attach a payment method (from the Payment Element or a SetupIntent) to the
    buyer's customer and make it the one charged directly and by auto-recharge."""
    if not payment_method_id or not payment_method_id.startswith(("pm_", "card_", "src_")):
        raise InvalidInput(
            "payment_method must be a Stripe payment method id (pm_…)",
            details={"field": "payment_method"},
        )
    customer = customer_ensure(organization=organization)
    client = stripe_client()
    try:
        client.v1.payment_methods.attach(
            payment_method_id, params={"customer": customer.customer_id}
        )
        client.v1.customers.update(
            customer.customer_id,
            params={"invoice_settings": {"default_payment_method": payment_method_id}},
        )
    except stripe.CardError as exc:
        raise PaymentFailed(_stripe_message(exc), details={"field": "payment_method"}) from exc
    except stripe.StripeError as exc:
        if is_transient(exc):
            raise unavailable(exc) from exc
        raise InvalidInput(
            f"payment_method: {_stripe_message(exc)}", details={"field": "payment_method"}
        ) from exc
    StripeCustomer.objects.filter(pk=customer.pk).update(
        default_payment_method=payment_method_id, updated_at=timezone.now()
    )
    customer.refresh_from_db()
    return customer
