"""Dramatiq actors of payments: take ids, load, call a service."""

from __future__ import annotations

import contextlib

import dramatiq

from payments import services, webhooks
from payments.models import TopUp


@dramatiq.actor(
    actor_name=services.STRIPE_EVENT_PROCESS_TASK,
    queue_name="payments",
    max_retries=8,
    min_backoff=1_000,
    max_backoff=300_000,
)
def stripe_event_process_task(event_id: str) -> None:
    """Apply one stored Stripe event; a failure is retried with backoff (and the
    ``process_stripe_events`` sweep catches anything this loses)."""
    webhooks.stripe_event_process(event_id=event_id)


@dramatiq.actor(
    actor_name=services.TOP_UP_SUBMIT_TASK, queue_name="payments", max_retries=5, min_backoff=5_000
)
def top_up_submit_task(top_up_id: int) -> None:
    """Charge the saved method for a top-up recorded by auto-recharge."""
    top_up = TopUp.objects.select_related("organization").filter(pk=top_up_id).first()
    if top_up is None or top_up.status != TopUp.Status.PENDING:
        return
    # A decline is recorded on the top-up, where the buyer sees it.
    with contextlib.suppress(services.PaymentFailed):
        services.top_up_submit(top_up=top_up)


@dramatiq.actor(queue_name="payments", max_retries=0, time_limit=3_600_000)
def payouts_run_task() -> None:
    """The scheduled payout run (also: ``manage.py run_payouts``)."""
    services.payouts_run()


@dramatiq.actor(
    actor_name=services.INVOICE_PAYMENT_SUBMIT_TASK,
    queue_name="payments",
    max_retries=5,
    min_backoff=5_000,
)
def invoice_payment_submit_task(payment_id: int) -> None:
    """Charge the saved method for an invoice's collection attempt. A decline is
    recorded on the attempt (and moves the dunning on); Stripe not answering leaves
    it pending for ``run_dunning``."""
    services.invoice_payment_submit(payment_id=payment_id)


@dramatiq.actor(queue_name="payments", max_retries=0, time_limit=3_600_000)
def invoice_dunning_run_task() -> None:
    """The scheduled dunning run (also: ``manage.py run_dunning``)."""
    services.invoice_dunning_run()
