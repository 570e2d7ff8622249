"""The HTTP API of the price book, invoices, credit notes, billing profiles and provider
statements, and the close_period command: every endpoint tried by the wrong caller,
bad input answered 400 naming the field, and what finance does through the API
checked against the ledger."""

from __future__ import annotations

import importlib
import io
from datetime import date, timedelta
from io import StringIO

import pytest
import yaml
from django.core.management import CommandError, call_command
from django.urls import include, path
from django.utils import timezone
from pypdf import PdfReader

from core.eventstore import NewEvent, event_append, stream_version
from core.models import Event
from core.money import Money
from invoicing.models import BillingProfile, CreditNote, Invoice, ProviderStatement
from invoicing.month_close import period_close
from invoicing.statements import statements_close
from pricing.book import price_book_forget
from pricing.models import Price
from pricing.schedule import price_schedule
from tests.invoicing.world import (
    CLOSE_AT,
    PERIOD,
    balance,
    grant,
    platform,
    record,
    settle,
    taxed_month,
)

pytestmark = pytest.mark.django_db

USD = 1_000_000


@pytest.fixture
def month(cast):
    """October 2026 of the generated world: usage of Buyer A (prepaid) and Buyer B
    (mostly owed, 19% tax) on Provider A and Provider B, rated and accrued."""
    return taxed_month(cast, events_per_buyer=120)


@pytest.fixture
def closed(month):
    period_close(period=PERIOD, now=CLOSE_AT)
    return month


def post(client, url, body=None, key="k-1", method="post"):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return getattr(client, method)(url, body or {}, format="json", **headers)


def error(response) -> dict:
    return response.json()["error"]


def named(response) -> set[str]:
    """The fields or parameters a 400 names."""
    details = error(response)["details"]
    names = set(details.get("fields", {}))
    for key in ("field", "parameter", "header"):
        if key in details:
            names.add(details[key])
    return names


def invoice_of(org) -> Invoice:
    return Invoice.objects.get(organization=org, kind="monthly")


def job_finished(org, job: str) -> None:
    """What the marketplace appends when a fine-tune job ends."""
    stream_id = f"finetune_job:{job}"
    event_append(
        stream_type="finetune_job",
        stream_id=stream_id,
        expected_version=stream_version(stream_id),
        events=[
            NewEvent(
                "FineTuneJobFinished",
                {
                    "job_id": job,
                    "organization_id": org.pk,
                    "status": "succeeded",
                    "steps_completed": 10,
                    "trained_tokens": 1000,
                    "fine_tuned_model": f"{job}-model",
                    "error": None,
                },
            )
        ],
        tenant_id=org.pk,
    )


# --- the price book ---------------------------------------------------------------


def test_public_prices_are_read_without_a_key_and_hide_what_is_not_public(cast):
    now = timezone.now()
    # in force since yesterday, scheduled (as the rules demand) before that
    price_schedule(
        item="welcome_credit",
        value=0,
        effective_from=now - timedelta(days=1),
        public=False,
        reason="internal promo paused",
        now=now - timedelta(days=2),
    )
    price_schedule(
        item="inference",
        tier="up-to-16b",
        variant="prompt",
        value=150_000,
        effective_from=now - timedelta(days=1),
        reason="new prompt price",
        now=now - timedelta(days=2),
    )
    price_book_forget()

    response = cast.anonymous.get("/api/v1/prices/")

    assert response.status_code == 200
    rows = {(r["item"], r["tier"], r["variant"]): r for r in response.json()["prices"]}
    assert ("welcome_credit", "", "") not in rows
    lora = rows[("fine_tune", "up-to-16b", "lora-sft")]
    assert (lora["value"], lora["amount"], lora["currency"]) == (480_000, "0.48", "USD")
    assert rows[("inference", "up-to-16b", "prompt")]["amount"] == "0.15"
    fee = rows[("gpu_lease_fee", "", "")]
    assert (fee["value"], fee["amount"], fee["unit"]) == (
        1000,
        None,
        "basis points on top of the lease price",
    )
    # a wrong key is still a 401, and members see the same list
    cast.anonymous.credentials(HTTP_AUTHORIZATION="Bearer tdm_nope_nope")
    assert cast.anonymous.get("/api/v1/prices/").status_code == 401
    member = cast.client(cast.buyer_a, role="member").get("/api/v1/prices/").json()
    assert member["prices"] == response.json()["prices"]


def _default_book_seeded() -> None:
    """The default book's first versions, as migration billing 0005 writes them: a
    transactional test that ran earlier on this database flushed them."""
    from pricing.book import DEFAULT_BOOK

    seeded_from = importlib.import_module("billing.migrations.0005_seed_price_book").SEEDED_FROM
    Price.objects.bulk_create(
        [
            Price(
                item=item,
                tier=tier,
                variant=variant,
                currency="USD",
                value=value,
                effective_from=seeded_from,
                public=True,
                reason="default price book",
                created_by="migration",
                created_at=timezone.now(),
            )
            for (item, tier, variant), value in DEFAULT_BOOK.items()
        ],
        ignore_conflicts=True,
    )
    price_book_forget()


def test_finance_schedules_a_price_change_that_takes_effect_later(cast):
    _default_book_seeded()
    at = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    body = {
        "item": "fine_tune",
        "tier": "up-to-16b",
        "variant": "lora-sft",
        "value": 400_000,
        "effective_from": at.isoformat(),
        "reason": "cheaper small LoRA",
    }

    created = post(cast.finance, "/api/v1/prices/schedule", body, key="price-1")
    again = post(cast.finance, "/api/v1/prices/schedule", body, key="price-1")

    assert created.status_code == 201, created.json()
    row = created.json()
    assert (row["value"], row["amount"], row["state"], row["public"]) == (
        400_000,
        "0.40",
        "scheduled",
        True,
    )
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert again.json() == row
    assert Price.objects.filter(item="fine_tune", value=400_000).count() == 1
    event = Event.objects.get(type="PriceScheduled")
    assert event.payload["value"] == 400_000 and event.metadata["actor"].startswith("org:")
    # not in force yet: the public list still shows the old price
    public = cast.anonymous.get("/api/v1/prices/").json()["prices"]
    [lora] = [p for p in public if (p["item"], p["tier"], p["variant"]) == body_key(body)]
    assert lora["value"] == 480_000
    # finance's schedule has both versions, each with its state
    versions = cast.finance.get("/api/v1/prices/schedule?item=fine_tune&limit=200").json()
    states = {
        (v["value"], v["state"])
        for v in versions["results"]
        if (v["tier"], v["variant"]) == ("up-to-16b", "lora-sft")
    }
    assert states == {(480_000, "in_force"), (400_000, "scheduled")}


def body_key(body: dict) -> tuple[str, str, str]:
    return body["item"], body["tier"], body["variant"]


def test_only_platform_finance_reads_the_schedule_or_changes_prices(cast):
    body = {
        "item": "fine_tune_minimum",
        "value": 1,
        "effective_from": (timezone.now() + timedelta(days=1)).isoformat(),
        "reason": "x",
    }
    for org in (cast.buyer_a, cast.provider_a):
        client = cast.client(org)
        assert client.get("/api/v1/prices/schedule").status_code == 403
        assert post(client, "/api/v1/prices/schedule", body).status_code == 403
    # a buyer-side finance role is not the operator's finance
    assert (
        cast.client(cast.buyer_a, role="finance").get("/api/v1/prices/schedule").status_code == 403
    )
    assert cast.anonymous.get("/api/v1/prices/schedule").status_code == 401
    assert post(cast.anonymous, "/api/v1/prices/schedule", body).status_code == 401
    assert Price.objects.filter(item="fine_tune_minimum", value=1).count() == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"item": "gpu_hours"}, "item"),
        ({"tier": "huge"}, "tier"),
        ({"effective_from": "2020-01-01T00:00:00Z"}, "effective_from"),
        ({"effective_from": "+1 minute"}, "effective_from"),
        ({"effective_from": "2031-01-01T00:00:00"}, "effective_from"),
        ({"value": -1}, "value"),
        ({"value": 1.5}, "value"),
        ({"reason": ""}, "reason"),
    ],
)
def test_a_bad_price_change_is_a_400_naming_the_field(cast, change, field):
    body = {
        "item": "inference",
        "tier": "17b-69b",
        "variant": "completion",
        "value": 700_000,
        "effective_from": (timezone.now() + timedelta(days=2)).isoformat(),
        "reason": "new completion price",
        **change,
    }
    if change.get("effective_from") == "+1 minute":  # inside the lead time
        body["effective_from"] = (timezone.now() + timedelta(minutes=1)).isoformat()

    response = post(cast.finance, "/api/v1/prices/schedule", body)

    assert response.status_code == 400, response.json()
    assert field in named(response)
    assert Price.objects.filter(item="inference", value=700_000).count() == 0


def test_the_price_schedule_needs_an_idempotency_key(cast):
    body = {
        "item": "fine_tune_minimum",
        "value": 4_000_000,
        "effective_from": (timezone.now() + timedelta(days=1)).isoformat(),
        "reason": "lower minimum",
    }
    response = post(cast.finance, "/api/v1/prices/schedule", body, key=None)
    assert response.status_code == 400 and "Idempotency-Key" in named(response)


def test_the_fine_tune_estimate_says_whether_credit_covers_it(cast):
    grant(cast.buyer_a, 10 * USD, "est-topup")
    client = cast.client(cast.buyer_a, role="member")
    body = {
        "model": "llama-3.1-8b",
        "training_type": "lora-sft",
        "training_tokens": 2_000_000,
        "epochs": 3,
        "validation_tokens": 500_000,
        "evaluations": 2,
    }

    small = client.post("/api/v1/prices/fine-tune-estimate", body, format="json")
    large = client.post(
        "/api/v1/prices/fine-tune-estimate",
        {**body, "training_tokens": 20_000_000},
        format="json",
    )
    tiny = client.post(
        "/api/v1/prices/fine-tune-estimate", {**body, "training_tokens": 1000}, format="json"
    )

    assert small.status_code == 200, small.json()
    quote = small.json()
    # (2M x 3 + 0.5M x 2) x 0.48 per 1M = 3.36, above the 5.00 minimum? no: minimum applies
    assert quote["billable_tokens"] == 7_000_000
    assert (quote["rate_micros"], quote["usage_micros"]) == (480_000, 3_360_000)
    assert (quote["amount_micros"], quote["amount"], quote["minimum_applied"]) == (
        5_000_000,
        "5.00",
        True,
    )
    assert (quote["available_micros"], quote["covered"]) == (10 * USD, True)
    big = large.json()
    assert (big["usage_micros"], big["minimum_applied"], big["covered"]) == (
        29_280_000,
        False,
        False,
    )
    assert tiny.json()["amount_micros"] == 5_000_000
    # another organization's credit is not the caller's
    other = cast.client(cast.buyer_b).post("/api/v1/prices/fine-tune-estimate", body, format="json")
    assert (other.json()["available_micros"], other.json()["covered"]) == (0, False)
    assert (
        cast.anonymous.post("/api/v1/prices/fine-tune-estimate", body, format="json").status_code
        == 401
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"training_type": "qlora"}, "training_type"),
        ({"training_tokens": -1}, "training_tokens"),
        ({"training_tokens": "many"}, "training_tokens"),
        ({"epochs": 0}, "epochs"),
        ({"evaluations": 10_000}, "evaluations"),
        ({"model": ""}, "model"),
    ],
)
def test_a_bad_estimate_request_is_a_400_naming_the_field(cast, change, field):
    body = {"model": "llama-3.1-8b", "training_type": "lora-sft", "training_tokens": 1, **change}
    response = cast.client(cast.buyer_a).post(
        "/api/v1/prices/fine-tune-estimate", body, format="json"
    )
    assert response.status_code == 400, response.json()
    assert field in named(response)


# --- invoices: who sees what --------------------------------------------------------


def test_buyers_see_only_their_own_invoices(closed):
    cast = closed
    mine, theirs = invoice_of(cast.buyer_a), invoice_of(cast.buyer_b)
    client = cast.client(cast.buyer_a, role="member")

    listed = client.get("/api/v1/invoices/").json()["results"]

    assert [row["id"] for row in listed] == [mine.pk]
    assert listed[0]["number"] == mine.number and listed[0]["status"] == mine.status
    for suffix in ("", ".html", ".pdf", "/credit-notes"):
        assert client.get(f"/api/v1/invoices/{theirs.pk}{suffix}").status_code == 404, suffix
        assert client.get(f"/api/v1/invoices/{mine.pk}{suffix}").status_code == 200, suffix
        assert cast.anonymous.get(f"/api/v1/invoices/{mine.pk}{suffix}").status_code == 401
    assert client.get("/api/v1/invoices/999999").status_code == 404
    # a provider has no invoices; finance sees every organization's
    assert cast.client(cast.provider_a).get("/api/v1/invoices/").json()["results"] == []
    everyone = cast.finance.get("/api/v1/invoices/").json()["results"]
    assert {row["id"] for row in everyone} == {mine.pk, theirs.pk}
    only_b = cast.finance.get(f"/api/v1/invoices/?organization={cast.buyer_b.pk}").json()
    assert [row["id"] for row in only_b["results"]] == [theirs.pk]
    assert cast.finance.get(f"/api/v1/invoices/{theirs.pk}").status_code == 200
    assert cast.anonymous.get("/api/v1/invoices/").status_code == 401


def test_the_invoice_list_filters_by_status_and_period(closed):
    cast = closed
    a = invoice_of(cast.buyer_a)

    def ids(query: str) -> set[int]:
        response = cast.finance.get(f"/api/v1/invoices/?{query}")
        assert response.status_code == 200, response.json()
        return {row["id"] for row in response.json()["results"]}

    statuses = {i.status for i in Invoice.objects.all()}
    for status in statuses:
        assert ids(f"status={status}") == set(
            Invoice.objects.filter(status=status).values_list("pk", flat=True)
        )
    assert ids("period=2026-10") == set(Invoice.objects.values_list("pk", flat=True))
    assert ids("period=2026-09") == set()
    assert a.pk in ids("kind=monthly")
    for query, parameter in (
        ("period=2026-13", "period"),
        ("period=October", "period"),
        ("period=2026-1", "period"),
        ("status=unpaid", "status"),
        ("kind=weekly", "kind"),
        ("organization=abc", "organization"),
    ):
        response = cast.finance.get(f"/api/v1/invoices/?{query}")
        assert response.status_code == 400, query
        assert parameter in named(response)


def test_the_invoice_detail_traces_every_line_to_journal_entries(closed):
    cast = closed
    invoice = invoice_of(cast.buyer_b)

    body = cast.client(cast.buyer_b).get(f"/api/v1/invoices/{invoice.pk}").json()

    assert body["number"] == invoice.number and body["status"] == "open"
    assert (body["tax_rate_bps"], body["tax_micros"]) == (1900, invoice.tax_micros)
    assert body["total"] == Money(invoice.total_micros, "USD").format()
    assert body["outstanding_micros"] == invoice.amount_due_micros > 0
    assert body["subtotal_micros"] == sum(line["amount_micros"] for line in body["lines"])
    assert [line["ordinal"] for line in body["lines"]] == list(range(1, len(body["lines"]) + 1))
    positions = set()
    for line in body["lines"]:
        assert line["amount"] == Money(line["amount_micros"], "USD").format()
        assert line["unit_price"] == Money(line["unit_price_micros"], "USD").format()
        assert line["quantity"] > 0 and line["amount_micros"] % 10_000 == 0
        assert sum(e["amount_micros"] for e in line["entries"]) == line["exact_micros"]
        for entry in line["entries"]:
            positions.add((entry["position"], entry["transfer_id"]))
    # each position is the journal entry with that transfer id
    events = Event.objects.filter(position__in=[p for p, _ in positions])
    found = {
        (e.position, e.payload.get("transfer_id") or f"hold:{e.payload['hold_id']}") for e in events
    }
    assert found == positions and positions


def test_the_invoice_renders_as_html_and_as_a_pdf(closed):
    cast = closed
    invoice = invoice_of(cast.buyer_b)
    client = cast.client(cast.buyer_b, role="member")

    html = client.get(f"/api/v1/invoices/{invoice.pk}.html")
    pdf = client.get(f"/api/v1/invoices/{invoice.pk}.pdf", HTTP_ACCEPT="application/pdf")

    assert html.status_code == 200 and html["Content-Type"].startswith("text/html")
    assert invoice.number in html.content.decode()
    assert Money(invoice.total_micros, "USD").format() in html.content.decode()
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
    assert invoice.number in text and Money(invoice.amount_due_micros, "USD").format() in text
    # an error asked for as a PDF still comes in the API's JSON shape
    missing = client.get("/api/v1/invoices/999999.pdf", HTTP_ACCEPT="application/pdf")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_a_buyer_sees_the_months_draft_refreshed_from_the_journal(month):
    cast = month
    client = cast.client(cast.buyer_a, role="member")

    first = client.get("/api/v1/invoices/draft?period=2026-10")

    assert first.status_code == 200, first.json()
    draft = first.json()
    assert draft["status"] == "draft" and draft["number"] is None
    assert draft["outstanding_micros"] is None
    assert draft["subtotal_exact_micros"] == sum(line["exact_micros"] for line in draft["lines"])
    assert draft["subtotal_exact_micros"] > 0
    # late usage of October shows up on the next look
    from tests.invoicing.world import START, event

    record(
        [
            event(
                cast.buyer_a,
                "tokens.prompt",
                1_000_000,
                START + timedelta(days=9),
                model="llama-3.1-8b",
            )
        ]
    )
    settle()
    second = client.get("/api/v1/invoices/draft?period=2026-10").json()
    assert second["id"] == draft["id"]
    assert second["subtotal_exact_micros"] == draft["subtotal_exact_micros"] + 100_000
    # another buyer's draft is its own; this month has charged nothing yet
    theirs = cast.client(cast.buyer_b).get("/api/v1/invoices/draft?period=2026-10").json()
    assert theirs["organization"] == cast.buyer_b.pk and theirs["id"] != draft["id"]
    assert client.get("/api/v1/invoices/draft").status_code == 404
    future = client.get("/api/v1/invoices/draft?period=2099-01")
    assert future.status_code == 400 and "period" in named(future)
    assert client.get("/api/v1/invoices/draft?period=2026-00").status_code == 400
    assert cast.anonymous.get("/api/v1/invoices/draft").status_code == 401


# --- invoices: what finance does -----------------------------------------------------

FINANCE_POSTS = [
    ("finalize", {}),
    ("void", {"reason": "wrong entity"}),
    ("mark-uncollectible", {"reason": "gone"}),
    ("mark-paid", {"payment_reference": "bank 42"}),
    ("credit-notes", {"amount": "1.00", "reason": "goodwill"}),
]


def test_only_platform_finance_moves_an_invoice_along(closed):
    cast = closed
    invoice = invoice_of(cast.buyer_b)
    before = (Event.objects.count(), invoice.status, CreditNote.objects.count())
    for org, role in (
        (cast.buyer_b, "admin"),
        (cast.buyer_b, "finance"),
        (cast.buyer_a, "admin"),
        (cast.provider_a, "admin"),
        (cast.operator, "member"),
    ):
        client = cast.client(org, role=role)
        for action, body in FINANCE_POSTS:
            url = f"/api/v1/invoices/{invoice.pk}/{action}"
            assert post(client, url, body).status_code == 403, (org.name, role, action)
        job = {"organization": cast.buyer_b.pk, "job": "ft-x"}
        assert post(client, "/api/v1/invoices/job", job).status_code == 403
    for action, body in FINANCE_POSTS:
        url = f"/api/v1/invoices/{invoice.pk}/{action}"
        assert post(cast.anonymous, url, body).status_code == 401
    invoice.refresh_from_db()
    assert (Event.objects.count(), invoice.status, CreditNote.objects.count()) == before


def test_finance_finalizes_a_draft_and_the_ledger_agrees(month):
    cast = month
    result = period_close(period=PERIOD, finalize=False, now=CLOSE_AT)
    assert result.drafts == 2
    draft = invoice_of(cast.buyer_b)
    assert draft.status == "draft" and balance(cast.buyer_b, "receivable") > 0
    owed_by_usage = balance(cast.buyer_b, "receivable")

    response = post(cast.finance, f"/api/v1/invoices/{draft.pk}/finalize", key="fin-b")
    again = post(cast.finance, f"/api/v1/invoices/{draft.pk}/finalize", key="fin-b-2")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "open" and body["number"].startswith("TDM-")
    assert again.status_code == 200 and again.json()["number"] == body["number"]
    invoice = invoice_of(cast.buyer_b)
    # rounding and tax went to their accounts; the receivable is what the invoice says
    assert balance(cast.buyer_b, "receivable") == invoice.amount_due_micros
    assert invoice.amount_due_micros == owed_by_usage + invoice.rounding_micros + invoice.tax_micros
    assert platform("tax_payable") == invoice.tax_micros > 0
    assert Event.objects.filter(type="InvoiceFinalized").count() == 1
    # the buyer now reads the final invoice; a draft of a month not ended is refused
    assert (
        cast.client(cast.buyer_b).get(f"/api/v1/invoices/{draft.pk}").json()["number"]
        == (body["number"])
    )
    now = timezone.now()
    running = Invoice.objects.create(
        key=f"monthly:{cast.buyer_a.pk}:{now:%Y-%m}:USD",
        organization=cast.buyer_a,
        kind="monthly",
        currency="USD",
        period_start=now.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
        period_end=now + timedelta(days=40),
        issuer="TDM",
        generated_at=now,
        grace_ends_at=now + timedelta(days=43),
    )
    early = post(cast.finance, f"/api/v1/invoices/{running.pk}/finalize", key="fin-early")
    assert early.status_code == 409 and "has not ended" in error(early)["message"]
    running.refresh_from_db()
    assert running.status == "draft" and running.number is None


def test_finance_voids_an_open_invoice_and_the_ledger_is_reversed(month):
    cast = month
    credit_before = balance(cast.buyer_b, "credit")
    period_close(period=PERIOD, now=CLOSE_AT)
    invoice = invoice_of(cast.buyer_b)

    missing_reason = post(cast.finance, f"/api/v1/invoices/{invoice.pk}/void", {}, key="v0")
    response = post(
        cast.finance, f"/api/v1/invoices/{invoice.pk}/void", {"reason": "wrong entity"}, key="v1"
    )

    assert missing_reason.status_code == 400 and "reason" in named(missing_reason)
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "void" and response.json()["number"] == invoice.number
    assert balance(cast.buyer_b, "receivable") == 0
    assert balance(cast.buyer_b, "credit") == credit_before + invoice.prepaid_applied_micros
    assert platform("tax_payable") == 0
    # a void invoice takes no payment
    paid = post(
        cast.finance,
        f"/api/v1/invoices/{invoice.pk}/mark-paid",
        {"payment_reference": "bank 1"},
        key="p1",
    )
    assert paid.status_code == 409


def test_finance_credits_an_invoice_and_the_ledger_agrees(closed):
    cast = closed
    invoice = invoice_of(cast.buyer_b)
    url = f"/api/v1/invoices/{invoice.pk}/credit-notes"
    receivable, revenue = balance(cast.buyer_b, "receivable"), platform("revenue")

    created = post(cast.finance, url, {"amount": "2.00", "reason": "a failed job"}, key="cn-1")
    replayed = post(cast.finance, url, {"amount": "2.00", "reason": "a failed job"}, key="cn-1")

    assert created.status_code == 201, created.json()
    note = created.json()
    assert (note["amount_micros"], note["tax_micros"], note["total"]) == (
        2 * USD,
        380_000,
        "2.38",
    )
    assert note["number"].startswith("TDM-CN-") and note["invoice"] == invoice.pk
    assert replayed.json() == note and CreditNote.objects.count() == 1
    assert balance(cast.buyer_b, "receivable") == receivable - 2_380_000
    assert platform("revenue") == revenue - 2 * USD
    entry = Event.objects.get(position=note["entry_position"])
    assert entry.payload["transfer_id"] == f"cn:{note['number']}"
    # the buyer reads it; another buyer does not
    listed = cast.client(cast.buyer_b, role="member").get(url).json()["results"]
    assert [n["number"] for n in listed] == [note["number"]]
    assert cast.client(cast.buyer_a).get(url).status_code == 404
    detail = cast.client(cast.buyer_b).get(f"/api/v1/invoices/{invoice.pk}").json()
    assert detail["credited_micros"] == 2_380_000
    assert detail["outstanding_micros"] == invoice.amount_due_micros - 2_380_000
    # more than what is left of the subtotal, fractions of a cent, bad text: 400 on amount
    left = Money(invoice.subtotal_micros - 2 * USD + 10_000, "USD").format()
    for amount in (left, "0.001", "-1.00", "0", "ten", 5):
        response = post(
            cast.finance, url, {"amount": amount, "reason": "x"}, key=f"cn-bad-{amount}"
        )
        assert response.status_code == 400, (amount, response.json())
        assert "amount" in named(response)
    assert CreditNote.objects.count() == 1
    assert post(cast.finance, url, {"amount": "1.00", "reason": "x"}, key=None).status_code == 400


def test_finance_records_a_bank_transfer_and_a_write_off(closed):
    cast = closed
    b = invoice_of(cast.buyer_b)
    clearing = platform("stripe_clearing")

    paid = post(
        cast.finance,
        f"/api/v1/invoices/{b.pk}/mark-paid",
        {"payment_reference": "SEPA 2026-11-12 #88"},
        key="pay-b",
    )
    twice = post(
        cast.finance,
        f"/api/v1/invoices/{b.pk}/mark-paid",
        {"payment_reference": "SEPA 2026-11-12 #88"},
        key="pay-b-again",
    )

    assert paid.status_code == 200, paid.json()
    assert (paid.json()["status"], paid.json()["amount_paid_micros"]) == (
        "paid",
        b.amount_due_micros,
    )
    assert twice.status_code == 200 and twice.json()["amount_paid_micros"] == b.amount_due_micros
    assert balance(cast.buyer_b, "receivable") == 0
    assert platform("stripe_clearing") == clearing + b.amount_due_micros
    blank = post(
        cast.finance, f"/api/v1/invoices/{b.pk}/mark-paid", {"payment_reference": ""}, key="p0"
    )
    assert blank.status_code == 400 and "payment_reference" in named(blank)

    # a paid invoice is not written off
    refused = post(cast.finance, f"/api/v1/invoices/{b.pk}/mark-uncollectible", {}, key="wo")
    assert refused.status_code == 409 and error(refused)["details"]["status"] == "paid"


def test_finance_writes_off_what_is_owed(closed):
    cast = closed
    b = invoice_of(cast.buyer_b)
    adjustments = platform("adjustments")

    gone = post(
        cast.finance,
        f"/api/v1/invoices/{b.pk}/mark-uncollectible",
        {"reason": "the company was dissolved"},
        key="wo",
    )

    assert gone.status_code == 200, gone.json()
    body = gone.json()
    assert (body["status"], body["written_off_micros"]) == ("uncollectible", b.amount_due_micros)
    assert body["outstanding_micros"] == 0
    assert balance(cast.buyer_b, "receivable") == 0
    assert platform("adjustments") == adjustments + b.amount_due_micros
    event = Event.objects.get(type="InvoiceMarkedUncollectible")
    assert event.payload["reason"] == "the company was dissolved"


def test_finance_invoices_an_ended_fine_tune_job_on_its_own(month):
    cast = month
    job = f"ft-{cast.buyer_a.pk}-0"
    body = {"organization": cast.buyer_a.pk, "job": job}

    running = post(cast.finance, "/api/v1/invoices/job", body, key="job-1")
    job_finished(cast.buyer_a, job)
    issued = post(cast.finance, "/api/v1/invoices/job", body, key="job-2")
    again = post(cast.finance, "/api/v1/invoices/job", body, key="job-3")

    assert running.status_code == 409 and "has not finished" in error(running)["message"]
    assert issued.status_code == 200, issued.json()
    invoice = issued.json()
    assert (invoice["kind"], invoice["job"], invoice["status"]) in {
        ("job", job, "open"),
        ("job", job, "paid"),
    }
    assert {line["job"] for line in invoice["lines"]} == {job}
    assert invoice["total_micros"] >= 5 * USD  # at least the per-job minimum
    assert again.json()["id"] == invoice["id"] and again.json()["number"] == invoice["number"]
    # the month's invoice leaves the job out
    period_close(period=PERIOD, now=CLOSE_AT)
    monthly = invoice_of(cast.buyer_a)
    assert job not in {line.job for line in monthly.lines.all()}
    # a job of another organization, an unknown job, a missing organization
    job_finished(cast.buyer_b, "ft-other")
    assert (
        post(
            cast.finance, "/api/v1/invoices/job", {**body, "job": "ft-other"}, key="j4"
        ).status_code
        == 409
    )
    job_finished(cast.buyer_a, "ft-nothing")
    nothing = post(cast.finance, "/api/v1/invoices/job", {**body, "job": "ft-nothing"}, key="j5")
    assert nothing.status_code == 404
    gone = post(cast.finance, "/api/v1/invoices/job", {**body, "organization": 999_999}, key="j6")
    assert gone.status_code == 404
    bad = post(cast.finance, "/api/v1/invoices/job", {"organization": "x", "job": ""}, key="j7")
    assert bad.status_code == 400 and {"organization", "job"} <= named(bad)


# --- billing profiles ------------------------------------------------------------------


def test_finance_sets_a_billing_profile_and_its_tax_rate(cast):
    url = f"/api/v1/billing-profiles/{cast.buyer_a.pk}"
    body = {
        "legal_name": "Buyer A Research Ltd",
        "address": "1 Quay Street\nDublin",
        "tax_id": "IE1234567X",
        "tax_rate_bps": 2300,
        "tax_label": "VAT",
    }

    response = cast.finance.put(url, body, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["tax_rate_bps"] == 2300
    profile = BillingProfile.objects.get(organization=cast.buyer_a)
    assert (profile.legal_name, profile.tax_rate_bps, profile.tax_label) == (
        "Buyer A Research Ltd",
        2300,
        "VAT",
    )
    event = Event.objects.get(type="BillingProfileSet")
    assert event.payload["tax_rate_bps"] == 2300 and event.tenant_id == cast.buyer_a.pk
    # the buyer reads its own; not another's; a default when none was set
    own = cast.client(cast.buyer_a, role="member").get(url)
    assert own.status_code == 200 and own.json()["tax_id"] == "IE1234567X"
    assert cast.client(cast.buyer_b).get(url).status_code == 404
    default = cast.client(cast.buyer_b).get(f"/api/v1/billing-profiles/{cast.buyer_b.pk}")
    assert default.json()["tax_rate_bps"] == 0
    assert cast.finance.get("/api/v1/billing-profiles/999999").status_code == 404
    # only platform finance writes
    for client in (cast.client(cast.buyer_a), cast.client(cast.provider_a)):
        assert client.put(url, {**body, "tax_rate_bps": 0}, format="json").status_code == 403
    assert cast.anonymous.get(url).status_code == 401
    assert cast.anonymous.put(url, body, format="json").status_code == 401
    assert BillingProfile.objects.get(organization=cast.buyer_a).tax_rate_bps == 2300


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tax_rate_bps": -1}, "tax_rate_bps"),
        ({"tax_rate_bps": 10_001}, "tax_rate_bps"),
        ({"tax_rate_bps": "19%"}, "tax_rate_bps"),
        ({"tax_rate_bps": None}, "tax_rate_bps"),
        ({"tax_id": "x" * 65}, "tax_id"),
        ({"legal_name": "n" * 201}, "legal_name"),
    ],
)
def test_a_bad_billing_profile_is_a_400_naming_the_field(cast, change, field):
    body = {"legal_name": "Buyer A", "tax_rate_bps": 1900, **change}
    response = cast.finance.put(f"/api/v1/billing-profiles/{cast.buyer_a.pk}", body, format="json")
    assert response.status_code == 400, response.json()
    assert field in named(response)
    assert not BillingProfile.objects.filter(organization=cast.buyer_a).exists()


def test_a_tax_rate_set_through_the_api_is_charged_on_the_next_invoice(month):
    cast = month
    cast.finance.put(
        f"/api/v1/billing-profiles/{cast.buyer_a.pk}",
        {"legal_name": "Buyer A SAS", "tax_rate_bps": 2000, "tax_label": "TVA"},
        format="json",
    )
    period_close(period=PERIOD, now=CLOSE_AT)
    invoice = invoice_of(cast.buyer_a)
    assert invoice.tax_rate_bps == 2000
    assert (
        invoice.tax_micros
        == Money(invoice.subtotal_micros // 5, "USD").round_to_minor().amount_micros
    )
    html = cast.client(cast.buyer_a).get(f"/api/v1/invoices/{invoice.pk}.html").content.decode()
    assert "Buyer A SAS" in html and "TVA (20.00%)" in html


# --- provider statements -----------------------------------------------------------
#
# A statement holds what reached the provider's payable in the month, by posting time;
# the generated world's usage is rated now, so it lands in the current month.


def this_month() -> date:
    now = timezone.now()
    return date(now.year, now.month, 1)


def test_a_provider_reads_its_month_computed_then_as_closed(month):
    cast = month
    client = cast.client(cast.provider_a, role="member")
    url = f"/api/v1/statements/{this_month():%Y-%m}"

    live = client.get(url)

    assert live.status_code == 200, live.json()
    body = live.json()
    assert body["closed"] is False and body["organization"] == cast.provider_a.pk
    statement = body["statement"]
    lines = statement["lines"]
    assert lines and {line["gpu_model"] for line in lines} <= {"H100", "A100"}
    assert all(line["node"].startswith(f"node-{cast.provider_a.pk}-") for line in lines)
    gross = sum(line["gross"]["micros"] for line in lines)
    assert statement["totals"]["gross"]["micros"] == gross == balance(cast.provider_a, "payable")
    assert statement["totals"]["gpu_seconds"] == sum(line["gpu_seconds"] for line in lines) > 0
    assert all(line["entries"] for line in lines)
    positions = {p for line in lines for p in line["entries"]}
    assert Event.objects.filter(position__in=positions).count() == len(positions)
    assert client.get("/api/v1/statements/").json()["results"] == []

    # the month closes: the stored statement is answered from then on
    assert statements_close(period=this_month()) == 2
    stored = client.get(url).json()
    assert stored["closed"] is True
    assert stored["statement"]["totals"] == statement["totals"]
    assert stored["statement"]["lines"] == lines
    [row] = client.get("/api/v1/statements/").json()["results"]
    saved = ProviderStatement.objects.get(organization=cast.provider_a)
    assert (row["id"], row["period"], row["gross_micros"]) == (
        saved.pk,
        f"{this_month():%Y-%m}",
        gross,
    )
    assert row["net_payable"] == Money(gross, "USD").format()
    # a month with nothing in it is an empty statement, not an error
    empty = client.get("/api/v1/statements/2026-01").json()
    assert empty["statement"]["lines"] == [] and empty["closed"] is False


def test_statements_are_for_their_provider_and_operator_finance(month):
    cast = month
    statements_close(period=this_month())
    period = f"{this_month():%Y-%m}"
    mine = cast.client(cast.provider_a)
    theirs = ProviderStatement.objects.get(organization=cast.provider_b)

    own = mine.get("/api/v1/statements/").json()["results"]
    other = mine.get(f"/api/v1/statements/{period}?organization={cast.provider_b.pk}")

    assert [row["organization"] for row in own] == [cast.provider_a.pk]
    assert other.status_code == 404
    narrowed = mine.get(f"/api/v1/statements/?organization={cast.provider_b.pk}").json()
    assert narrowed["results"] == []
    for client in (cast.client(cast.buyer_a), cast.client(cast.buyer_b, role="finance")):
        assert client.get("/api/v1/statements/").status_code == 403
        assert client.get(f"/api/v1/statements/{period}").status_code == 403
    assert cast.anonymous.get("/api/v1/statements/").status_code == 401
    assert cast.anonymous.get(f"/api/v1/statements/{period}").status_code == 401
    # finance reads every provider's, and names one for a month
    everyone = cast.finance.get("/api/v1/statements/").json()["results"]
    assert {row["organization"] for row in everyone} == {cast.provider_a.pk, cast.provider_b.pk}
    read = cast.finance.get(f"/api/v1/statements/{period}?organization={cast.provider_b.pk}")
    assert read.json()["closed"] is True and read.json()["statement"] == theirs.document
    not_provider = cast.finance.get(f"/api/v1/statements/{period}?organization={cast.buyer_a.pk}")
    assert not_provider.status_code == 404
    for bad in ("2026-13", "26-10", "october", "2099-01"):
        response = mine.get(f"/api/v1/statements/{bad}")
        assert response.status_code == 400, bad
        assert "period" in named(response)


# --- close_period --------------------------------------------------------------------


def close(*args: str) -> str:
    out = StringIO()
    call_command("close_period", *args, stdout=out)
    return out.getvalue()


def test_close_period_finalizes_once_and_a_second_run_changes_nothing(month):
    cast = month
    first = close("--period", "2026-10", "--now", CLOSE_AT.isoformat())
    invoices = sorted(Invoice.objects.values_list("key", "number", "status", "document_sha256"))
    books = (balance(cast.buyer_b, "receivable"), platform("tax_payable"), platform("rounding"))
    events = Event.objects.count()

    second = close("--period", "2026-10", "--now", CLOSE_AT.isoformat())

    assert "Closed 2026-10:" in first and "organizations charged: 2" in first
    assert "invoices finalized:    2" in first and "provider statements:" in first
    assert "invoices finalized:    0" in second and "already final:         2" in second
    assert sorted(Invoice.objects.values_list("key", "number", "status", "document_sha256")) == (
        invoices
    )
    assert all(number for _, number, _, _ in invoices)
    assert (balance(cast.buyer_b, "receivable"), platform("tax_payable"), platform("rounding")) == (
        books
    )
    # the statements are rewritten the same; nothing else is appended
    assert Event.objects.count() == events


def test_close_period_without_finalizing_refreshes_drafts(month):
    output = close("--period", "2026-10", "--no-finalize", "--now", CLOSE_AT.isoformat())
    assert "drafts refreshed:      2" in output and "invoices finalized:    0" in output
    assert set(Invoice.objects.values_list("status", flat=True)) == {"draft"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--period", "2026-13"), "YYYY-MM"),
        (("--period", "october"), "YYYY-MM"),
        (("--period", "2026-1"), "YYYY-MM"),
        (("--period", "2026-10", "--now", "yesterday"), "--now"),
        (("--period", "2026-10", "--now", "2026-11-10T00:00:00"), "time zone"),
        (("--period", "2099-01", "--finalize"), "has not ended"),
    ],
)
def test_close_period_refuses_bad_input_clearly(cast, args, message):
    with pytest.raises(CommandError, match=message):
        close(*args)
    assert not Invoice.objects.exists()


# --- the schema ------------------------------------------------------------------------

# This module doubles as a URLconf holding only billing's endpoints, so that the schema
# check below judges them alone (other apps' warnings are theirs to fix).
urlpatterns = [
    path("api/v1/", include(f"{app}.urls")) for app in ("ledger", "pricing", "invoicing")
]


def test_the_schema_of_billing_generates_without_warnings():
    from drf_spectacular.drainage import GENERATOR_STATS

    GENERATOR_STATS.reset()  # warnings counted by schemas generated before, elsewhere
    out = StringIO()

    call_command(
        "spectacular",
        "--urlconf",
        __name__,
        "--validate",
        "--fail-on-warn",
        stdout=out,
    )

    paths = yaml.safe_load(out.getvalue())["paths"]
    assert set(paths["/api/v1/prices/schedule"]) == {"get", "post"}
    assert paths["/api/v1/prices/"]["get"]["security"][-1] == {}  # no key needed
    assert set(paths["/api/v1/invoices/{invoice_id}/credit-notes"]) == {"get", "post"}
    assert set(paths["/api/v1/billing-profiles/{organization_id}"]) == {"get", "put"}
    pdf = paths["/api/v1/invoices/{invoice_id}.pdf"]["get"]["responses"]["200"]["content"]
    assert set(pdf) == {"application/pdf"}
    for route, operation in (
        ("/api/v1/invoices/{invoice_id}/credit-notes", "post"),
        ("/api/v1/invoices/{invoice_id}/void", "post"),
        ("/api/v1/prices/schedule", "post"),
    ):
        parameters = paths[route][operation]["parameters"]
        [key] = [p for p in parameters if p["name"] == "Idempotency-Key"]
        assert key["required"] is True, route
