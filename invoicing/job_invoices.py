"""A fine-tune job's bill and its own invoice: the per-job minimum charged when a job
succeeds (the ``FineTuneMinimums`` follower of the marketplace's
``FineTuneJobFinished``), and a job's invoice issued on request once it has ended."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.db import (
    retry_transaction,
)
from core.errors import Conflict, InvalidInput, NotFound
from core.eventstore import RecordedEvent
from core.followers import Follower, register
from core.models import Event, Organization
from invoicing.calculations import invoice_compute
from invoicing.drafts import _apply_draft
from invoicing.finalization import _catch_up, invoice_finalize
from invoicing.models import (
    Invoice,
    InvoiceLine,
    UsageAccrual,
)
from invoicing.periods import issuer, job_key, minimum_transfer_id
from ledger.models import Account
from ledger.services import EntryRequest, account_open, ledger_execute, platform_account, raise_for
from marketplace.workloads.events import JOB_STREAM, FineTuneJobFinished, job_stream_id
from pricing.selectors import fine_tune_quote
from pricing.services import billing_terms_for

# --- fine-tune jobs -----------------------------------------------------------------


@retry_transaction
def fine_tune_job_close(*, organization: Organization, job: str, actor: str = "system") -> int:
    """A fine-tune job ended: its bill is ``fine_tune_quote`` of what rating charged,
    so a job that used less than the minimum is topped up to it (``ftmin:…``)."""
    _catch_up()
    currency = settings.TANDEM_CURRENCY
    accruals = list(
        UsageAccrual.objects.filter(
            buyer_id=organization.pk, product="fine_tune", subject=job
        ).exclude(transfer_id="")
    )
    if not accruals:
        raise NotFound(f"no fine-tune usage of job {job!r}", details={"job": job})
    first = min(accruals, key=lambda a: a.first_usage_id)
    rated = sum(a.amount_micros for a in accruals)
    quote = fine_tune_quote(
        model=first.model,
        training_type=first.training_type or "lora-sft",
        training_tokens=sum(a.quantity for a in accruals),
        rated_micros=rated,
    )
    top_up = quote.amount_micros - rated
    if top_up <= 0:
        return 0

    postpaid = billing_terms_for(organization_ids=[organization.pk])[organization.pk].postpaid
    kind = Account.Kind.RECEIVABLE if postpaid else Account.Kind.CREDIT
    buyer = account_open(organization=organization, kind=kind, currency=currency)
    revenue = platform_account(kind=Account.Kind.REVENUE, currency=currency)
    entry = EntryRequest(
        transfer_id=minimum_transfer_id(organization.pk, job),
        currency=currency,
        legs=((buyer.pk, "D", top_up), (revenue.pk, "C", top_up)),
        kind="minimum",
        description=f"fine-tune {job}: minimum charge per job",
    )
    result = ledger_execute([entry], actor=actor)[0]
    if result.code == "exceeds_limit":  # prepaid credit short: the rest is owed
        receivable = account_open(
            organization=organization, kind=Account.Kind.RECEIVABLE, currency=currency
        )
        available = max(0, top_up - int(result.details.get("missing_micros", top_up)))
        legs = [(receivable.pk, "D", top_up - available), (revenue.pk, "C", top_up)]
        if available:
            legs.insert(0, (buyer.pk, "D", available))
        result = ledger_execute(
            [EntryRequest(entry.transfer_id, currency, tuple(legs), "minimum", entry.description)],
            actor=actor,
        )[0]  # type: ignore[arg-type]
    raise_for(result)
    return top_up


logger = logging.getLogger(__name__)


def invoice_job_issue(*, organization: Organization, job: str, actor: str = "system") -> Invoice:
    """On demand, the invoice of one closed fine-tune job, finalized at once."""
    currency = settings.TANDEM_CURRENCY
    key = job_key(organization.pk, job, currency)
    existing = Invoice.objects.filter(key=key).first()
    if existing is not None and existing.status != Invoice.Status.DRAFT:
        return existing
    billed = InvoiceLine.objects.filter(
        invoice__organization=organization, invoice__kind=Invoice.Kind.MONTHLY, job=job
    ).exclude(invoice__status=Invoice.Status.DRAFT)
    if billed.exists():
        raise Conflict(
            f"job {job!r} is billed on invoice {billed.first().invoice.number} already",  # type: ignore[union-attr]
            details={"job": job},
        )
    fine_tune_job_close(organization=organization, job=job, actor=actor)
    now = timezone.now()
    invoice = existing
    if invoice is None:
        try:
            with transaction.atomic():
                invoice = Invoice.objects.create(
                    key=key,
                    organization=organization,
                    kind=Invoice.Kind.JOB,
                    currency=currency,
                    period_start=now,
                    period_end=now,
                    job=job,
                    issuer=issuer(),
                    generated_at=now,
                    grace_ends_at=now,
                )
        except IntegrityError:
            # A concurrent request is issuing this job's invoice: asking again returns it.
            raise Conflict(
                f"the invoice of job {job!r} is being issued; ask again for it",
                details={"job": job},
            ) from None
    computed = invoice_compute(organization=organization, currency=currency, job=job)
    _apply_draft(invoice, computed, now)
    return invoice_finalize(invoice=invoice, actor=actor, now=now, close_usage=False)


# --- on request (the API) -------------------------------------------------------------


def fine_tune_job_finished(*, organization_id: int, job: str) -> bool:
    """Whether the marketplace recorded the org's fine-tune job as ended (succeeded,
    failed or cancelled)."""
    return any(
        payload.get("organization_id") == organization_id
        for payload in Event.objects.filter(
            stream_id=job_stream_id(job), type=FineTuneJobFinished.type
        ).values_list("payload", flat=True)
    )


def invoice_job_request(*, organization: Organization, job: str, actor: str) -> Invoice:
    """The invoice of one fine-tune job, on request, once the job has ended (until then
    its usage is still arriving); the one issued before, if any."""
    job = (job or "").strip()
    if not job or len(job) > 200:
        raise InvalidInput("job must be a fine-tune job id", details={"field": "job"})
    if not fine_tune_job_finished(organization_id=organization.pk, job=job):
        raise Conflict(
            f"fine-tune job {job!r} of {organization.name} has not finished: a job is "
            "invoiced on its own once it has ended",
            details={"field": "job", "job": job},
        )
    return invoice_job_issue(organization=organization, job=job, actor=actor)


class FineTuneMinimums(Follower):
    """Charges a succeeded fine-tune job its per-job minimum when the marketplace
    records the job's end (``FineTuneJobFinished``). Only a succeeded job owes it; a
    cancelled or failed one pays its completed steps, as they were rated. A replay
    charges nothing more: the minimum's transfer id is the job's."""

    name = "invoicing.fine_tune_minimum"
    stream_types = (JOB_STREAM,)

    def handle(self, event: RecordedEvent) -> None:
        if event.type != FineTuneJobFinished.type or event.payload.get("status") != "succeeded":
            return
        organization = Organization.objects.get(pk=event.payload["organization_id"])
        job = event.payload["job_id"]
        try:
            fine_tune_job_close(organization=organization, job=job)
        except NotFound as error:
            if error.details.get("job") != job:
                raise  # not the job's missing usage: a real fault
            # A job with no rated usage (it ended before its first metered step) was
            # billed nothing and owes nothing.
            logger.warning("fine-tune job %s ended with no rated usage: no minimum charged", job)


fine_tune_minimums = register(FineTuneMinimums())
