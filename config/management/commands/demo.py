"""Load the demo that `make run` serves: an operator, a provider with GPUs and offers,
a buyer with credits, and every part of the platform run once through its real path:
a top-up through the webhook path, a GPU lease that ran and was settled, one running
now, a fine-tune of the built-in tiny model trained for real and invoiced, an
inference deployment serving it, usage rated into the ledger, the month's draft
invoice, and API keys to try it with.

Safe to run again: organizations, ledger entries, orders and the job are created
once (their ids are fixed or looked up, so the ledger replays them); new API keys are
printed each run because a key is only ever shown once.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import autodiscover_modules

from core import services as core
from core.followers import followers_run_until_idle
from core.models import Organization
from exports import selectors as finance_exports
from exports import services as exports
from invoicing import services as invoicing
from marketplace import demo as market
from marketplace.assignments import demo as runs
from marketplace.models import Lease
from marketplace.together import projects
from marketplace.workloads import demo as workloads
from metering import demo as usage
from payments import demo as payments
from pricing.welcome import welcome_credit_grant
from providers import demo as supply

OPERATOR = "Tandem Operations"
PROVIDER = "Northlake Research Computing"
BUYER = "Acme AI"


# A person per role, to sign in to the portal with (passwords are new each run).
PEOPLE = [
    ("buyer admin", "buyer@acme.example", "admin"),
    ("provider admin", "admin@northlake.example", "admin"),
    ("operator finance", "finance@tandem.example", "finance"),
]


def _person(organization: Organization, email: str, role: str) -> str:
    """The demo's person of ``role`` in ``organization``, with a new password (returned)."""
    password = secrets.token_urlsafe(9)
    user, _ = get_user_model().objects.get_or_create(username=email, defaults={"email": email})
    user.set_password(password)
    user.save()
    core.membership_create(user=user, organization=organization, role=role)
    return password


def _org(name: str, kind: str, *, is_operator: bool = False) -> Organization:
    found = Organization.objects.filter(name=name).first()
    return found or core.org_create(name=name, kind=kind, is_operator=is_operator)


class Command(BaseCommand):
    help = "Load the demo: organizations, offers, credits, leases, a fine-tune, invoices."

    def handle(self, *args: Any, **options: Any) -> None:
        # Actors the demo's services send to are declared (none of them trains).
        autodiscover_modules(*settings.DRAMATIQ_AUTODISCOVER_MODULES)
        with transaction.atomic():
            operator = _org(OPERATOR, "both", is_operator=True)
            provider = _org(PROVIDER, "provider")
            buyer = _org(BUYER, "buyer")

        # A site, a node of 8x H100 registered from an inventory file, two offers,
        # and its last hour and a half of telemetry (the provider's history charts).
        supply.load(provider=provider)
        supply.telemetry_history(provider=provider)
        # The price book's welcome credits ($25.00, an expiring promo grant). The
        # follower of new organizations grants them too; the grant's id is fixed.
        welcome_credit_grant(organization=buyer)
        # A $50.00 top-up confirmed by a signed payment_intent.succeeded, and the
        # provider's connected account for payouts.
        payments.load(buyer=buyer, provider=provider)
        # An L40S lease that ran its hour and was settled; an H100 lease running now.
        market.load(buyer=buyer, provider=provider)
        # A fine-tune of the tiny model: ordered, leased, trained by the leased node's
        # agent code (runtime.launch as a subprocess, reporting over loopback HTTP),
        # metered per step.
        job = workloads.load(buyer=buyer, provider=provider)
        # A second fine-tune that continues from the first one's final checkpoint
        # (from_checkpoint): queued; the next matching round leases its GPU and make
        # run's agent trains it from the first job's adapter.
        more = workloads.continued(job=job)
        # The fine-tuned model served: an inference deployment of the buyer, leased on
        # the provider's GPUs; its engine waits for the demo node's agent (make run).
        deployment = workloads.serve(job=job)
        # A dedicated endpoint (Together's client.endpoints): the tiny model on one H100
        # replica, a lease of the buyer's billed per minute; served by the same agent.
        dedicated = market.endpoint(buyer=buyer)
        # A small batch on interruptible capacity (at the batch discount): make run's
        # matching loop starts its runner, the demo node's agent serves it.
        demo_batch = workloads.batch(buyer=buyer)
        # Inference tokens of the deployment and GPU-seconds of the settled L40S lease
        # (usage is accepted only for subjects the platform made). The fine-tune's
        # training tokens are the runtime's, metered per step while it trained: its
        # bill (the per-job minimum) closed when it finished, so none are added here.
        settled = Lease.objects.filter(organization=buyer).order_by("pk").first()
        assert settled is not None, "the market demo leaves a settled lease"
        usage.load(buyer=buyer, lease=settled.usage_subject, deployment=deployment.public_id)
        # Rating, accruals and the other followers catch up with all of the above.
        followers_run_until_idle()

        # Who the buyer's invoices are addressed to (the console's billing details),
        # before its first invoice is finalized, so the invoice prints them.
        invoicing.billing_details_set(
            organization=buyer,
            legal_name="Acme AI Ltd",
            address="1 Example Street\nLondon EC1A 1AA\nUnited Kingdom",
            tax_id="GB123456789",
            actor="demo",
        )
        # The fine-tune's own invoice (finalized and numbered), and the month's draft.
        job_invoice = invoicing.invoice_job_issue(
            organization=buyer, job=job.public_id, actor="demo"
        )
        now = timezone.now()
        with transaction.atomic():
            draft = invoicing.invoice_draft_refresh(
                organization=buyer, period=now.date().replace(day=1), now=now
            )

        # A finance export of the month's invoice register, written here (a worker
        # would), so the finance pages list one ready to download (once).
        if not finance_exports.exports_recent().exists():
            register = exports.export_create(
                kind="invoice_register",
                format="csv",
                params={"period": f"{now:%Y-%m}"},
                requested_by="demo",
                enqueue=False,
            )
            exports.export_run(export_id=register.pk)

        # The demo node's agent key in a file (make run's agent reads it), and a command
        # on the running H100 lease for that agent to run.
        key_file = supply.agent_key_file(
            provider=provider, path=settings.VAR_DIR / "demo-agent.key"
        )
        run = runs.load(buyer=buyer, hostname=supply.HOSTNAME)

        keys = [
            (buyer, "admin", "buyer admin"),
            (provider, "admin", "provider admin"),
            (operator, "finance", "operator finance"),
        ]
        self.stdout.write(self.style.SUCCESS("Demo data loaded."))
        self.stdout.write(f"The demo node's agent key is in {key_file} (run_agent --key-file).")
        if run is not None:
            self.stdout.write(
                f"Run {run.pk} on lease {run.lease_id} waits for the node's agent: "
                f"GET /api/v1/leases/{run.lease_id}/runs/{run.pk}/logs"
            )
        self.stdout.write(
            f"Fine-tuned model: {job.fine_tuned_model}; its invoice {job_invoice.number}"
            + (f"; this month's draft invoice id {draft.pk}" if draft is not None else "")
        )
        more.refresh_from_db()
        self.stdout.write(
            f"Continued fine-tune: {more.public_id} from checkpoint {more.from_checkpoint} "
            f"({more.status}; make run's agent trains it): GET /v1/fine-tunes/{more.public_id}"
        )
        self.stdout.write(
            f"Dedicated endpoint: model {projects.project_slug(buyer)}/{dedicated.name} "
            f"(project {projects.project_id(buyer)}, GET /v2/projects/{projects.project_id(buyer)}"
            f"/endpoints/{dedicated.public_id})"
        )
        self.stdout.write(
            f"Batch {demo_batch.public_id} ({demo_batch.total} requests, interruptible "
            "capacity): GET /v1/batches/" + demo_batch.public_id
        )
        self.stdout.write("API keys (shown once; new ones each run):")
        for org, role, label in keys:
            created = core.api_key_create(organization=org, name=f"demo {label}", role=role)
            self.stdout.write(f"  {label:18} {org.name:32} {created.raw_key}")
        self.stdout.write(
            "Try: curl -H 'Authorization: Bearer <buyer admin key>' "
            "http://127.0.0.1:8000/api/v1/accounts/"
        )
        self.stdout.write("People, to sign in at http://127.0.0.1:8000/ (new passwords each run):")
        for (org, _, _), (label, email, role) in zip(keys, PEOPLE, strict=True):
            password = _person(org, email, role)
            self.stdout.write(f"  {label:18} {email:26} password {password}")
