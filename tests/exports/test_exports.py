"""Finance exports and reports: a generated month exported as CSV, Parquet and XLSX
opens with pandas and adds up to the ledger; the reconciliation finds nothing
unexplained on it and names a difference put in on purpose; the revenue chart is a
PNG; a background export runs through the real broker and reports its progress;
only the operator's finance staff reach the endpoints; bad input is a 400 naming
the field."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import dramatiq
import pandas as pd
import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.db.models import Q, Sum
from dramatiq import Worker

from core.money import Money
from exports import builders, monthly_report, reconciliation, services
from exports.models import FinanceExport
from invoicing.credit_notes import credit_note_issue
from invoicing.lifecycle import invoice_mark_paid
from invoicing.models import BillingProfile, Invoice, UsageAccrual
from invoicing.month_close import period_close
from invoicing.settlement import outstanding
from invoicing.statements import statement_compute
from ledger import services as ledger
from ledger.models import Account, Balance
from metering.models import UsageEvent
from payments.models import ConnectedAccount, Payout, TopUp
from payments.services import payout_plan, payout_record_paid
from tests.invoicing.world import (
    CLOSE_AT,
    PERIOD,
    balance,
    generate_month,
    grant,
    platform,
    record,
    settle,
)

FORMATS = ("csv", "parquet", "xlsx")
ENDPOINTS = [
    ("get", "/api/v1/finance/exports/"),
    ("post", "/api/v1/finance/exports/"),
    ("get", "/api/v1/finance/exports/1"),
    ("get", "/api/v1/finance/exports/1/download"),
    ("get", "/api/v1/finance/reconciliation"),
    ("get", "/api/v1/finance/reports/monthly?period=2026-10"),
    ("get", "/api/v1/finance/reports/revenue-chart.png"),
]


@pytest.fixture
def export_dir(settings, tmp_path):
    settings.EXPORT_DIR = tmp_path / "exports"
    return settings.EXPORT_DIR


@pytest.fixture
def month(cast):
    """October 2026 of two buyers (one prepaid, one running out of credit into a
    receivable, taxed at 19%) on two providers, closed into invoices."""
    BillingProfile.objects.create(organization=cast.buyer_b, tax_rate_bps=1900)
    record(generate_month(cast, events_per_buyer=120))
    settle()
    period_close(period=PERIOD, now=CLOSE_AT)
    return cast


def _read(path, format: str, kind: str) -> pd.DataFrame:
    """As a reader of the file would: text columns as text (so "40.00" stays so)."""
    text = {c.name: str for c in builders.COLUMNS[kind] if c.kind == "text"}
    if format == "csv":
        return pd.read_csv(path, keep_default_na=False, dtype=text)
    if format == "parquet":
        return pd.read_parquet(path)
    return pd.read_excel(path, engine="openpyxl", keep_default_na=False, dtype=text)


def _export(kind: str, format: str, tmp_path, **params) -> pd.DataFrame:
    checked = services.export_params_check(kind=kind, format=format, params=params)[2]
    path = tmp_path / f"{kind}-{len(list(tmp_path.iterdir()))}.{format}"
    services.export_write(kind=kind, format=format, params=checked, path=path)
    return _read(path, format, kind)


def _pay_out(provider) -> Payout:
    """A payout of the provider's whole payable that Stripe accepted."""
    account = ConnectedAccount.objects.create(
        organization=provider,
        account_id=f"acct_{provider.pk}",
        country="US",
        payouts_enabled=True,
    )
    payout = payout_plan(connected_account=account, minimum_micros=0, currency="USD")
    assert payout is not None
    payout_record_paid(payout_id=payout.pk, transfer_id=f"tr_{payout.pk}")
    payout.refresh_from_db()
    return payout


def _balances(kind: str) -> dict[int, int]:
    """Posted balance of every account of ``kind`` on its normal side, by account."""
    out = {}
    for b in Balance.objects.filter(account__kind=kind).select_related("account"):
        credit = b.credits_posted - b.debits_posted
        out[b.account_id] = credit if b.account.normal_side == "C" else -credit
    return out


# --- the exports add up to the ledger ----------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("format", FORMATS)
def test_exports_open_with_pandas_and_add_up_to_the_ledger(month, tmp_path, format):
    cast = month
    grant(cast.buyer_a, 7_500_000, "world:after-close")  # unused credit to defer
    payout = _pay_out(cast.provider_a)
    # trial balance: every account, debits equal credits, each row the live balance
    tb = _export("trial_balance", format, tmp_path)
    assert len(tb) == Balance.objects.exclude(debits_posted=0, credits_posted=0).count() > 5
    assert tb["debits_micros"].sum() == tb["credits_micros"].sum() > 0
    signed = (tb["debits_micros"] - tb["credits_micros"]).sum()
    assert signed == 0
    for row in tb.itertuples():
        live = Balance.objects.get(account_id=row.account_id)
        assert (row.debits_micros, row.credits_micros) == (live.debits_posted, live.credits_posted)
        assert str(row.balance) == Money(int(row.balance_micros), "USD").format()

    # deferred revenue: the buyers' unused prepaid credit, account by account
    deferred = _export("deferred_revenue", format, tmp_path)
    credit_balances = _balances(Account.Kind.CREDIT)
    assert deferred["balance_micros"].sum() == sum(credit_balances.values()) > 0
    assert dict(zip(deferred["organization_id"], deferred["balance_micros"], strict=True)) == {
        cast.buyer_a.pk: balance(cast.buyer_a, "credit"),
        cast.buyer_b.pk: balance(cast.buyer_b, "credit"),
    }
    assert deferred["granted_micros"].sum() == 48_500_000  # the grants so far

    # revenue: the revenue and fees accounts, attributed to the month's usage
    revenue = _export("revenue", format, tmp_path)
    assert revenue["total_micros"].sum() == platform("revenue") + platform("fees") > 0
    assert revenue["revenue_micros"].sum() == platform("revenue")
    assert revenue["fees_micros"].sum() == platform("fees")
    assert "unattributed" not in set(revenue["product"])
    assert set(revenue["month"]) == {"2026-10"}
    assert set(revenue["product"]) == {"fine_tune", "inference", "gpu_lease"}
    accruals = UsageAccrual.objects.exclude(transfer_id="")
    inference = accruals.filter(product="inference").aggregate(s=Sum("amount_micros"))["s"]
    assert revenue[revenue["product"] == "inference"]["revenue_micros"].sum() == inference
    per_gpu = revenue[revenue["product"] == "gpu_lease"].set_index("gpu_model")["fees_micros"]
    for gpu_model in ("H100", "A100"):
        fees = accruals.filter(gpu_model=gpu_model).aggregate(s=Sum("fee_micros"))["s"]
        assert per_gpu[gpu_model] == fees > 0

    # receivables aging: what is still owed on open invoices, in its bucket
    aging = _export("ar_aging", format, tmp_path)
    open_invoices = Invoice.objects.filter(status__in=["open", "past_due"])
    assert aging["outstanding_micros"].sum() == sum(outstanding(i) for i in open_invoices) > 0
    assert sorted(aging["number"]) == sorted(i.number for i in open_invoices)
    assert len(aging) == 2  # both buyers ran out of prepaid credit: both owe
    buckets = ["days_0_30_micros", "days_31_60_micros", "days_61_90_micros", "days_90_plus_micros"]
    assert (aging[buckets].sum(axis=1) == aging["outstanding_micros"]).all()

    # the register: both invoices with the totals the invoices hold
    register = _export("invoice_register", format, tmp_path, period="2026-10")
    assert sorted(register["number"]) == sorted(Invoice.objects.values_list("number", flat=True))
    assert register["total_micros"].sum() == sum(
        Invoice.objects.values_list("total_micros", flat=True)
    )
    assert register["outstanding_micros"].sum() == aging["outstanding_micros"].sum()

    # provider earnings: every payable credit, the closing balance the ledger's
    earnings = _export("provider_earnings", format, tmp_path)
    payables = _balances(Account.Kind.PAYABLE)
    assert earnings["closing_balance_micros"].sum() == sum(payables.values()) > 0
    for provider in (cast.provider_a, cast.provider_b):
        rows = earnings[earnings["provider_id"] == provider.pk]
        assert len(rows) == 1
        month_posted = datetime.strptime(rows["month"].iloc[0], "%Y-%m").date()  # noqa: DTZ007
        statement = statement_compute(provider=provider, period=month_posted)
        assert rows["earned_micros"].iloc[0] == statement.gross_micros > 0
        assert rows["gpu_seconds"].iloc[0] == statement.gpu_seconds > 0
        assert rows["paid_out_micros"].iloc[0] == statement.payouts_micros
    paid = earnings[earnings["provider_id"] == cast.provider_a.pk]
    assert (paid["payouts"].iloc[0], paid["paid_out_micros"].iloc[0]) == (1, payout.amount_micros)
    assert payout.amount_micros > 0

    # usage detail of one buyer and month: every event, rated as the ledger rated it
    detail = _export(
        "usage_detail", format, tmp_path, organization=cast.buyer_a.pk, period="2026-10"
    )
    assert len(detail) == UsageEvent.objects.filter(buyer_id=cast.buyer_a.pk).count() == 120
    rated = UsageAccrual.objects.filter(buyer_id=cast.buyer_a.pk).aggregate(s=Sum("amount_micros"))
    assert detail["amount_micros"].sum() == rated["s"]
    assert set(detail["product"]) == {"fine_tune", "inference", "gpu_lease"}


@pytest.mark.django_db
def test_reading_the_journal_in_small_chunks_gives_the_same_frames(month, monkeypatch):
    _pay_out(month.provider_a)
    now = datetime.now(UTC)
    whole = [
        builders.revenue_frame(currency="USD"),
        builders.provider_earnings_frame(currency="USD"),
        builders.deferred_revenue_frame(as_of=now),
    ]
    monkeypatch.setattr("exports.journal.CHUNK_ROWS", 1)  # every posting a chunk of its own
    assert len(builders.journal(Q(kind__in=["revenue", "fees", "payable", "credit"]))) > 10
    chunked = [
        builders.revenue_frame(currency="USD"),
        builders.provider_earnings_frame(currency="USD"),
        builders.deferred_revenue_frame(as_of=now),
    ]
    for one, other in zip(whole, chunked, strict=True):
        pd.testing.assert_frame_equal(one, other)
    entries = {line.position for line in builders.journal(Q(kind__in=["revenue", "fees"]))}
    assert whole[0]["entries"].sum() >= len(entries) > 1


@pytest.mark.django_db
@pytest.mark.parametrize("format", FORMATS)
def test_an_empty_export_still_opens_with_its_columns(cast, tmp_path, format):
    ledger.credits_grant(
        organization=cast.buyer_a, amount_micros=5_000_000, currency="USD", reason="seed"
    )
    # before anything was posted: no rows, the same columns
    tb = _export("trial_balance", format, tmp_path, as_of="2020-01-01")
    assert len(tb) == 0
    assert list(tb.columns) == [c.name for c in builders.TRIAL_BALANCE_COLUMNS]
    now = _export("trial_balance", format, tmp_path)
    assert sorted(now["balance_micros"]) == [5_000_000, 5_000_000]


@pytest.mark.django_db
def test_aging_puts_an_invoice_in_the_bucket_of_its_days_past_due(month, tmp_path):
    invoice = Invoice.objects.get(organization=month.buyer_b)
    for days, bucket in ((-3, "0-30"), (30, "0-30"), (45, "31-60"), (61, "61-90"), (200, "90+")):
        as_of = (invoice.due_at + timedelta(days=days)).isoformat()
        aging = _export("ar_aging", "csv", tmp_path, as_of=as_of)
        row = aging[aging["number"] == invoice.number]
        assert list(row["bucket"]) == [bucket]
        assert list(row["days_past_due"]) == [days]
        assert list(row[f"days_{bucket.replace('-', '_').replace('+', '_plus')}_micros"]) == [
            outstanding(invoice)
        ]


# --- reconciliation ----------------------------------------------------------------


@pytest.mark.django_db
def test_reconciliation_finds_nothing_unexplained_on_the_generated_month(month):
    cast = month
    # as closed: receivables, tax and rounding each equal the invoices
    result = reconciliation.reconciliation_compute(currency="USD")
    sections = {s.name: s for s in result.sections}
    assert result.unexplained_micros == 0
    owed_now = balance(cast.buyer_a, "receivable") + balance(cast.buyer_b, "receivable")
    assert sections["receivables"].ledger_micros == owed_now > 0
    assert sections["receivables"].differences == []
    assert sections["tax"].ledger_micros == sections["tax"].documents_micros > 0
    assert sections["rounding"].ledger_micros == platform("rounding")

    # a credit note, the invoice paid, a finance correction and usage of next month
    owed = Invoice.objects.get(organization=cast.buyer_b)
    credit_note_issue(invoice=owed, amount_micros=2_000_000, reason="goodwill", key="cn-x")
    owed.refresh_from_db()
    due = outstanding(owed)
    assert due == owed.amount_due_micros - 2_380_000
    invoice_mark_paid(invoice=owed, payment_reference="pi_777")
    payout = _pay_out(cast.provider_b)
    receivable = Account.objects.get(organization=cast.buyer_b, kind="receivable")
    adjustments = ledger.platform_account(kind="adjustments", currency="USD")
    ledger.adjustment_post(
        transfer_id="adj:test:1",
        currency="USD",
        legs=[(receivable.pk, "D", 1_230_000), (adjustments.pk, "C", 1_230_000)],
        reason="late fee",
        actor="test",
    )
    result = reconciliation.reconciliation_compute(currency="USD")
    sections = {s.name: s for s in result.sections}
    assert result.unexplained_micros == 0
    received = sections["payments_received"]
    assert received.ledger_micros == received.documents_micros == due
    sent = sections["payouts_sent"]
    assert sent.ledger_micros == sent.documents_micros == payout.amount_micros > 0
    explained = sections["receivables"].differences
    assert [(d.cause, d.amount_micros, d.explained) for d in explained] == [
        (reconciliation.EXPLAINED_KINDS["adjustment"], 1_230_000, True)
    ]
    assert sections["tax"].documents_micros == owed.tax_micros - 380_000  # 19% of 2.00


@pytest.mark.django_db
def test_reconciliation_lists_a_difference_put_in_on_purpose(month):
    cast = month
    owed = Invoice.objects.get(organization=cast.buyer_b)
    # an invoice marked paid without the payment reaching the ledger
    Invoice.objects.filter(pk=owed.pk).update(
        status="paid", amount_paid_micros=owed.amount_due_micros
    )
    # and a top-up recorded as credited that the ledger never credited
    top_up = TopUp.objects.create(
        organization=cast.buyer_a,
        amount_micros=10_000_000,
        currency="USD",
        source="payment_element",
        status="succeeded",
        request_key="lost",
        credited_micros=10_000_000,
    )
    # and a payout whose record says more than the ledger paid out
    payout = _pay_out(cast.provider_a)
    Payout.objects.filter(pk=payout.pk).update(amount_micros=payout.amount_micros + 10_000)
    result = reconciliation.reconciliation_compute(currency="USD")
    found = {(d.section, d.reference): d for d in result.unexplained}
    assert set(found) == {
        ("receivables", owed.number),
        ("payments_received", f"invoice {owed.number}"),
        ("payments_received", f"top-up {top_up.pk}"),
        ("payouts_sent", f"payout {payout.pk}"),
    }
    assert found[("payouts_sent", f"payout {payout.pk}")].amount_micros == -10_000
    assert found[("receivables", owed.number)].amount_micros == owed.amount_due_micros
    assert found[("payments_received", f"top-up {top_up.pk}")].amount_micros == -10_000_000
    assert "no entry" in found[("payments_received", f"top-up {top_up.pk}")].cause
    assert result.unexplained_micros == 2 * owed.amount_due_micros + 10_000_000 + 10_000


@pytest.mark.django_db
def test_reconciliation_over_the_api_and_the_command(month, capsys):
    response = month.finance.get("/api/v1/finance/reconciliation?currency=USD")
    assert response.status_code == 200
    body = response.json()
    assert body["unexplained_micros"] == 0 and body["unexplained"] == "0.00"
    assert {s["name"] for s in body["sections"]} >= {
        "journal",
        "receivables",
        "payments_received",
        "payouts_sent",
    }
    call_command("export_finance", "reconciliation")
    assert "unexplained difference: 0.00 USD" in capsys.readouterr().out
    Invoice.objects.filter(organization=month.buyer_b).update(tax_micros=1)
    with pytest.raises(CommandError, match="do not reconcile"):
        call_command("export_finance", "reconciliation")


# --- the chart and the monthly report ----------------------------------------------


@pytest.mark.django_db
def test_the_revenue_chart_is_a_png_and_the_monthly_report_embeds_it(month):
    from matplotlib import image

    png = monthly_report.revenue_chart_png(currency="USD", months=3, until=PERIOD)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = image.imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (450, 900)
    pivot = monthly_report.revenue_by_month(currency="USD", months=3, until=PERIOD)
    assert list(pivot.index) == ["2026-08", "2026-09", "2026-10"]
    assert int(pivot.loc["2026-10"].sum()) == platform("revenue") + platform("fees")

    response = month.finance.get("/api/v1/finance/reports/revenue-chart.png?until=2026-10")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    response = month.finance.get("/api/v1/finance/reports/monthly?period=2026-10")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "data:image/png;base64,iVBOR" in html
    total = Money(platform("revenue") + platform("fees"), "USD").format()
    assert total in html
    assert "Unexplained difference: 0.00" in html


def test_revenue_by_month_is_read_again_only_when_the_books_change(month, monkeypatch):
    # given: the pivot computed once
    now = datetime.now(UTC).date()
    first = monthly_report.revenue_by_month(currency="USD", months=3, until=now)

    # when nothing posted since: the same pivot, without reading the journal
    def unread(**kwargs):
        raise AssertionError("the journal was read again for unchanged books")

    with monkeypatch.context() as patch:
        patch.setattr(monthly_report, "revenue_frame", unread)
        again = monthly_report.revenue_by_month(currency="USD", months=3, until=now)
    assert again.equals(first)

    # when revenue posts: read again, and the new amount is in this month
    ledger.ledger_execute(
        [
            ledger.EntryRequest(
                transfer_id="adjust:revenue-1",
                currency="USD",
                legs=(
                    (ledger.platform_account(kind="promo", currency="USD").pk, "D", 5_000_000),
                    (ledger.platform_account(kind="revenue", currency="USD").pk, "C", 5_000_000),
                ),
                kind="adjustment",
                description="a correction",
            )
        ],
        actor="finance@example.com",
    )
    after = monthly_report.revenue_by_month(currency="USD", months=3, until=now)
    this_month = f"{now:%Y-%m}"
    before = int(first.loc[this_month].sum()) if this_month in first.index else 0
    assert int(after.loc[this_month].sum()) == before + 5_000_000
    assert int(after.loc[this_month, "adjustment"]) == 5_000_000


def test_the_reconciliation_is_worked_out_again_when_the_books_move(month, monkeypatch):
    # given: a report kept for the books as they are
    first = reconciliation.reconciliation_report(currency="USD")

    # when nothing moved: the kept report, not worked out again
    def unread(**kwargs):
        raise AssertionError("the reconciliation was worked out again for unchanged books")

    with monkeypatch.context() as patch:
        patch.setattr(reconciliation, "reconciliation_compute", unread)
        assert reconciliation.reconciliation_report(currency="USD") is not None
        # asked for fresh: worked out now, whatever is kept
        with pytest.raises(AssertionError, match="worked out again"):
            reconciliation.reconciliation_report(currency="USD", fresh=True)

    # when the books move (a grant posts): worked out again, of the new position
    grant(month.buyer_a, 1_000_000, "reconciliation-moves")
    after = reconciliation.reconciliation_report(currency="USD")
    assert after.position > first.position
    assert not after.unexplained


# --- the background export through the broker ---------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_background_export_runs_through_the_broker_and_reports_progress(
    cast, export_dir, monkeypatch, tmp_path
):
    record(generate_month(cast, events_per_buyer=60))
    settle()
    monkeypatch.setattr(builders, "CHUNK_ROWS", 25)
    seen: list[tuple[int, int | None]] = []
    write = services.export_write

    def watched(**kwargs):
        inner = kwargs.pop("progress")

        def progress(written, total):
            inner(written, total)
            # read from another connection: the progress is committed, others see it
            other = connections.create_connection("default")
            try:
                with other.cursor() as cursor:
                    cursor.execute(
                        "SELECT rows_written, rows_total FROM billing_financeexport "
                        "WHERE status = 'running'"
                    )
                    seen.append(cursor.fetchone())
            finally:
                other.close()

        return write(progress=progress, **kwargs)

    monkeypatch.setattr(services, "export_write", watched)
    broker = dramatiq.get_broker()
    broker.flush_all()
    body = {
        "kind": "usage_detail",
        "format": "parquet",
        "params": {"organization": cast.buyer_a.pk, "period": "2026-10"},
    }
    # when finance asks for it
    response = cast.finance.post(
        "/api/v1/finance/exports/", body, format="json", HTTP_IDEMPOTENCY_KEY="exp-1"
    )
    assert response.status_code == 202, response.content
    export_id = response.json()["id"]
    assert response.json()["status"] == "queued" and response.json()["download_url"] is None
    again = cast.finance.post(
        "/api/v1/finance/exports/", body, format="json", HTTP_IDEMPOTENCY_KEY="exp-1"
    )
    assert again.json()["id"] == export_id and FinanceExport.objects.count() == 1
    early = cast.finance.get(f"/api/v1/finance/exports/{export_id}/download")
    assert early.status_code == 409

    # and a worker takes it from the broker
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        broker.join("exports", timeout=60_000)
        worker.join()
    finally:
        worker.stop()

    # then progress went up chunk by chunk, the total known from the start
    rows = UsageEvent.objects.filter(buyer_id=cast.buyer_a.pk).count()
    assert rows == 60
    assert seen == [(0, rows), (25, rows), (50, rows), (60, rows)]
    shown = cast.finance.get(f"/api/v1/finance/exports/{export_id}").json()
    assert shown["status"] == "succeeded", shown
    assert (shown["rows_written"], shown["rows_total"], shown["progress"]) == (rows, rows, 1.0)
    listed = cast.finance.get("/api/v1/finance/exports/").json()["results"]
    assert [e["id"] for e in listed] == [export_id]
    download = cast.finance.get(shown["download_url"])
    assert download.status_code == 200
    assert download["Content-Disposition"].startswith("attachment")
    frame = pd.read_parquet(io.BytesIO(b"".join(download.streaming_content)))
    assert len(frame) == rows
    rated = UsageAccrual.objects.filter(buyer_id=cast.buyer_a.pk).aggregate(s=Sum("amount_micros"))
    assert frame["amount_micros"].sum() == rated["s"]
    assert list(export_dir.glob("*/*.part")) == []


@pytest.mark.django_db
def test_the_command_writes_an_export_and_a_report(month, export_dir, tmp_path, capsys):
    out = tmp_path / "revenue.xlsx"
    call_command("export_finance", "revenue", "--period", "2026-10", "-o", str(out))
    frame = pd.read_excel(out, engine="openpyxl")
    assert frame["total_micros"].sum() == platform("revenue") + platform("fees")
    assert FinanceExport.objects.get().status == "succeeded"
    html = tmp_path / "report.html"
    call_command("export_finance", "report", "--period", "2026-10", "-o", str(html))
    assert "data:image/png;base64," in html.read_text()
    with pytest.raises(CommandError, match="period"):
        call_command("export_finance", "revenue", "--period", "2026-13", "-o", str(out))


# --- who may call, and bad input -----------------------------------------------------


def _call(client, method: str, path: str):
    if method == "post":
        body = {"kind": "revenue", "format": "csv"}
        return client.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    return client.get(path)


@pytest.mark.django_db
def test_only_the_operators_finance_staff_reach_the_endpoints(cast, export_dir):
    export = services.export_create(
        kind="revenue", format="csv", params={}, requested_by="test", enqueue=False
    )
    wrong = {
        "buyer admin": cast.client(cast.buyer_a),
        "buyer finance": cast.client(cast.buyer_b, role="finance"),
        "provider admin": cast.client(cast.provider_a),
        "provider finance": cast.client(cast.provider_b, role="finance"),
        "operator member": cast.client(cast.operator, role="member"),
    }
    for method, path in ENDPOINTS:
        path = path.replace("/exports/1", f"/exports/{export.pk}")
        for who, client in wrong.items():
            response = _call(client, method, path)
            assert response.status_code == 403, (who, method, path, response.status_code)
            assert response.json()["error"]["code"] == "forbidden"
        response = _call(cast.anonymous, method, path)
        assert response.status_code == 401, (method, path, response.status_code)
        # and finance staff of the operator do reach it
        response = _call(cast.finance, method, path)
        assert response.status_code in (200, 202, 409), (method, path, response.status_code)
    assert FinanceExport.objects.count() == 2  # the one above and finance's POST


@pytest.mark.django_db
def test_bad_input_is_a_400_naming_the_field(cast, export_dir):
    finance = cast.finance
    cases = [
        ({"kind": "balance_sheet", "format": "csv"}, "kind"),
        ({"kind": "revenue", "format": "pdf"}, "format"),
        ({"kind": "revenue"}, "format"),
        ({"kind": "revenue", "format": "csv", "params": {"period": "2026-13"}}, "period"),
        ({"kind": "revenue", "format": "csv", "params": {"period": "October"}}, "period"),
        ({"kind": "trial_balance", "format": "csv", "params": {"as_of": "yesterday"}}, "as_of"),
        ({"kind": "trial_balance", "format": "csv", "params": {"as_of": "2026-02-30"}}, "as_of"),
        (
            {"kind": "trial_balance", "format": "csv", "params": {"as_of": "2026-10-01T00:00"}},
            "as_of",
        ),
        ({"kind": "deferred_revenue", "format": "xlsx", "params": {"currency": "BTC"}}, "currency"),
        (
            {"kind": "usage_detail", "format": "csv", "params": {"period": "2026-10"}},
            "organization",
        ),
        (
            {
                "kind": "usage_detail",
                "format": "csv",
                "params": {"organization": 999999, "period": "2026-10"},
            },
            "organization",
        ),
        (
            {"kind": "usage_detail", "format": "csv", "params": {"organization": cast.buyer_a.pk}},
            "period",
        ),
        ({"kind": "ar_aging", "format": "csv", "params": {"period": "2026-10"}}, "period"),
        ({"kind": "revenue", "format": "csv", "params": ["period"]}, "params"),
    ]
    for n, (body, field) in enumerate(cases):
        response = finance.post(
            "/api/v1/finance/exports/", body, format="json", HTTP_IDEMPOTENCY_KEY=f"bad-{n}"
        )
        assert response.status_code == 400, (body, response.status_code)
        error = response.json()["error"]
        assert error["details"].get("field") == field, (body, error)
        assert field in error["message"] or field == "params", error
    assert FinanceExport.objects.count() == 0
    response = finance.post(
        "/api/v1/finance/exports/", {"kind": "revenue", "format": "csv"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"header": "Idempotency-Key"}
    for path, parameter in [
        ("/api/v1/finance/reports/monthly?period=2026-13", "period"),
        ("/api/v1/finance/reports/monthly", "period"),
        ("/api/v1/finance/reports/revenue-chart.png?until=13-2026", "until"),
        ("/api/v1/finance/reports/revenue-chart.png?months=0", "months"),
        ("/api/v1/finance/reconciliation?currency=XYZ", "currency"),
    ]:
        response = finance.get(path)
        assert response.status_code == 400, path
        assert response.json()["error"]["details"] == {"parameter": parameter}
    assert finance.get("/api/v1/finance/exports/999999").status_code == 404


def test_as_of_a_date_means_through_the_end_of_that_day():
    assert services.parse_as_of("2026-10-31") == datetime(2026, 11, 1, tzinfo=UTC)
    assert services.parse_as_of("2026-10-31T12:00:00+02:00") == datetime(
        2026, 10, 31, 10, tzinfo=UTC
    )
    assert builders.aging_bucket(-5) == "0-30" and builders.aging_bucket(91) == "90+"
