"""The buyer console's work pages through Django's test client: usage (by day and
product, with cost, filtered, as CSV), fine-tune jobs (list, new with its estimate,
the job page and its live partial, cancel), orders and leases, files (upload checked
as the API checks it, delete), models and deployments, and the organization
switcher. Every page is tried by another organization (404) and by a role that may
not act (403, and the action hidden)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core.money import Money
from marketplace import services as market
from marketplace.models import Lease, Order
from marketplace.services import OrderSpec
from marketplace.workloads import files as workload_files
from marketplace.workloads import jobs
from marketplace.workloads.models import Deployment, File, FineTuneJob
from metering.schema import SubjectIn, UsageEventIn
from metering.services import usage_record
from pricing.book import price_book_forget, rate_for
from pricing.rating import rate_quantity
from pricing.welcome import welcome_credit_grant
from tests.marketplace.conftest import fund, healthy_node, offer
from tests.workloads.conftest import SAMPLE_CHAT, jsonl

pytestmark = pytest.mark.django_db

TINY = "tandem/tiny-llama"


@pytest.fixture(autouse=True)
def _storage(tmp_path: Path, settings) -> None:
    settings.WORKLOADS_STORAGE_DIR = tmp_path / "files"


def signed_in(who) -> Client:
    client = Client()
    client.force_login(who.user)
    return client


def upload(org, content: bytes = b"", name: str = "train.jsonl") -> File:
    return workload_files.file_upload(
        organization=org,
        purpose="fine-tune",
        filename=name,
        chunks=[content or jsonl(SAMPLE_CHAT)],
    )


def start_job(org) -> FineTuneJob:
    welcome_credit_grant(organization=org)
    file = upload(org)
    return jobs.finetune_job_create(
        organization=org,
        request=jobs.JobRequest(model=TINY, training_file=file.public_id, n_epochs=1),
    )


def raw_order(org) -> Order:
    welcome_credit_grant(organization=org)
    return market.order_place(
        organization=org,
        spec=OrderSpec(
            gpus_per_node=1,
            gpu_models=["h100-sxm-80gb"],
            limit_price_per_gpu_hour_micros=1_000_000,
            duration_seconds=600,
        ),
    )


def deployment(org, job: FineTuneJob) -> Deployment:
    """A live deployment of the org's model, as the first request leaves it (its
    order placed is not needed for what the page shows and stops)."""
    return Deployment.objects.create(
        public_id=f"dep-{job.public_id[3:]}",
        organization=org,
        model=job.fine_tuned_model or "",
        base_model=job.model,
        status=Deployment.Status.READY,
        idle_timeout_seconds=600,
        last_request_at=timezone.now(),
    )


def training_tokens(job: FineTuneJob, *, n: int, quantity: int, at) -> None:
    events = [
        UsageEventIn(
            id=f"{job.public_id}-{at.timestamp()}-{i}",
            source="runtime/test",
            type="tokens.training",
            subject=SubjectIn(org=job.organization_id, job=job.public_id),
            time=at,
            quantity=quantity,
            dimensions={"model": TINY, "training_type": "lora-sft"},
        )
        for i in range(n)
    ]
    outcomes = usage_record(events=events)
    assert all(o.status == "accepted" for o in outcomes), outcomes


# --- usage -----------------------------------------------------------------------


def test_usage_is_shown_by_day_and_product_with_its_cost_and_the_csv_says_the_same(person):
    buyer, stranger = person("buyer"), person("buyer")
    job, theirs = start_job(buyer.organization), start_job(stranger.organization)
    today = timezone.now() - timedelta(minutes=1)
    yesterday = today - timedelta(days=1)
    training_tokens(job, n=3, quantity=10_000, at=today)
    training_tokens(job, n=1, quantity=5_000, at=yesterday)
    training_tokens(theirs, n=1, quantity=999_999, at=today)
    rate = rate_for("tokens.training", {"model": TINY, "training_type": "lora-sft"}, today)
    cost_today = rate_quantity(rate, 30_000, {}).amount_micros
    cost_yesterday = rate_quantity(rate, 5_000, {}).amount_micros
    assert cost_today > 0
    client = signed_in(buyer)
    period = {"since": yesterday.date().isoformat(), "until": today.date().isoformat()}

    page = client.get(reverse("portal:console-usage"), period)

    assert page.status_code == 200
    rows = page.context["report"].rows
    assert [(r.day, r.product, r.model, r.quantity, r.amount_micros) for r in rows] == [
        (yesterday.date(), "tokens.training", TINY, 5_000, cost_yesterday),
        (today.date(), "tokens.training", TINY, 30_000, cost_today),
    ]
    body = page.content.decode()
    assert str(Money(cost_today + cost_yesterday, "USD")) in body  # the total, with currency
    assert "999999" not in body  # another organization's usage
    csv_response = client.get(reverse("portal:console-usage-csv"), period)
    assert csv_response["Content-Type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(csv_response.content.decode())))
    assert lines == [
        ["day", "product", "model", "quantity", "unit", "cost", "currency"],
        [
            yesterday.date().isoformat(),
            "Fine-tuning: training tokens",
            TINY,
            "5000",
            "tokens",
            Money(cost_yesterday, "USD").format(),
            "USD",
        ],
        [
            today.date().isoformat(),
            "Fine-tuning: training tokens",
            TINY,
            "30000",
            "tokens",
            Money(cost_today, "USD").format(),
            "USD",
        ],
    ]
    # filtered to the model: the same rows; to another product: nothing
    by_model = client.get(reverse("portal:console-usage"), {**period, "model": TINY})
    assert [r.quantity for r in by_model.context["report"].rows] == [5_000, 30_000]
    other_model = client.get(reverse("portal:console-usage"), {**period, "model": "gpt-9"})
    assert other_model.context["report"].rows == []

    other = client.get(reverse("portal:console-usage"), {**period, "product": "tokens.prompt"})
    assert other.context["report"].rows == []
    assert "No usage in this period" in other.content.decode()


@pytest.mark.django_db(transaction=True)  # matching runs its own transactions
def test_gpu_time_is_the_raw_leases_as_billed_and_managed_leases_are_not_in_it(person):
    # given a raw lease that ran its hour two hours ago, settled through its hold
    buyer, provider = person("buyer"), person("provider")
    node = healthy_node(provider.organization, "n1")
    past = timezone.now() - timedelta(hours=2)
    offer(node, price=2_000_000, window_start=past - timedelta(hours=1))
    fund(buyer.organization, 100_000_000)
    order = market.order_place(
        organization=buyer.organization,
        spec=OrderSpec(
            gpus_per_node=2,
            gpu_models=["h100-sxm-80gb"],
            limit_price_per_gpu_hour_micros=3_000_000,
            duration_seconds=3600,
        ),
        now=past,
    )
    market.matching_round(now=past)
    market.leases_tick(now=past + timedelta(hours=1))
    lease = Lease.objects.get(order=order)
    assert (lease.state, lease.gpu_seconds_billed) == ("ended", 7200)
    assert lease.billed_until is not None
    # and a fine-tune job's lease would be paid per token: not GPU time
    start_job(buyer.organization)
    client = signed_in(buyer)

    page = client.get(reverse("portal:console-usage"), {"product": "gpu.seconds"})

    assert [(r.day, r.model, r.quantity, r.amount_micros) for r in page.context["report"]] == [
        (lease.billed_until.date(), "h100-sxm-80gb", 7200, lease.billed_micros)
    ]
    assert lease.billed_micros == 4_400_000  # 2 GPUs x 1 h x $2.00, plus the 10% fee
    assert "4.40 USD" in page.content.decode() and "2.0 GPU-hours" in page.content.decode()
    tokens_only = client.get(reverse("portal:console-usage"), {"product": "tokens.training"})
    assert tokens_only.context["report"].rows == []
    other_gpu = client.get(reverse("portal:console-usage"), {"model": "l40s-48gb"})
    assert other_gpu.context["report"].rows == []


def test_a_bad_usage_period_is_refused_beside_its_field(person):
    client = signed_in(person("buyer"))
    backwards = client.get(
        reverse("portal:console-usage"), {"since": "2026-03-10", "until": "2026-03-01"}
    )
    assert backwards.status_code == 400
    assert list(backwards.context["form"].errors) == ["until"]
    assert 'aria-invalid="true"' in backwards.content.decode()
    garbled = client.get(reverse("portal:console-usage-csv"), {"since": "yesterday"})
    assert garbled.status_code == 400
    assert list(garbled.context["form"].errors) == ["since"]


# --- files -----------------------------------------------------------------------


def test_an_upload_is_checked_as_the_api_checks_it_and_a_bad_line_is_named(person):
    buyer = person("buyer")
    client = signed_in(buyer)
    good = client.post(
        reverse("portal:console-file-upload"),
        {"purpose": "fine-tune", "file": SimpleUploadedFile("train.jsonl", jsonl(SAMPLE_CHAT))},
    )
    assert good.status_code == 302
    stored = File.objects.get(organization=buyer.organization)
    assert (stored.status, stored.examples) == ("processed", len(SAMPLE_CHAT))
    listing = client.get(reverse("portal:console-files")).content.decode()
    assert stored.public_id in listing and "8 examples" in listing
    start_here = f"{reverse('portal:console-job-create')}?file={stored.public_id}"
    assert f'href="{start_here}"' in listing
    new_job = client.get(start_here).content.decode()
    assert f'<option value="{stored.public_id}" selected>' in new_job

    bad_lines = jsonl([*SAMPLE_CHAT[:2], {"messages": [{"role": "user", "content": "Hi"}]}])
    bad = client.post(
        reverse("portal:console-file-upload"),
        {"purpose": "fine-tune", "file": SimpleUploadedFile("bad.jsonl", bad_lines)},
    )
    assert bad.status_code == 400
    assert "line 3" in bad.context["form"].errors["file"][0]

    wrong_type = client.post(
        reverse("portal:console-file-upload"),
        {"purpose": "fine-tune", "file": SimpleUploadedFile("notes.txt", b"hello")},
    )
    assert wrong_type.status_code == 400
    assert ".jsonl, .parquet or .csv" in wrong_type.context["form"].errors["file"][0]
    assert File.objects.filter(organization=buyer.organization, filename="notes.txt").count() == 0


def test_files_of_another_organization_are_not_found_and_finance_may_not_change_files(person):
    buyer, stranger = person("buyer"), person("buyer")
    finance = person(org=buyer.organization, role="finance")
    mine, theirs = upload(buyer.organization), upload(stranger.organization)
    client = signed_in(buyer)
    assert (
        client.post(reverse("portal:console-file-delete", args=[theirs.public_id])).status_code
        == 404
    )
    assert File.objects.get(pk=theirs.pk).deleted_at is None
    reader = signed_in(finance)
    page = reader.get(reverse("portal:console-files")).content.decode()
    assert mine.public_id in page and theirs.public_id not in page
    assert "Upload a file" not in page and "Delete" not in page  # the actions hidden
    assert (
        reader.post(reverse("portal:console-file-delete", args=[mine.public_id])).status_code == 403
    )
    refused = reader.post(
        reverse("portal:console-file-upload"),
        {"purpose": "fine-tune", "file": SimpleUploadedFile("t.jsonl", jsonl(SAMPLE_CHAT))},
    )
    assert refused.status_code == 403
    # the admin deletes it
    assert (
        client.post(reverse("portal:console-file-delete", args=[mine.public_id])).status_code == 302
    )
    assert File.objects.get(pk=mine.pk).deleted_at is not None


def test_a_file_used_by_a_running_job_is_not_deleted(person):
    buyer = person("buyer")
    job = start_job(buyer.organization)
    client = signed_in(buyer)
    response = client.post(
        reverse("portal:console-file-delete", args=[job.training_file.public_id]), follow=True
    )
    assert f"is used by fine-tune job {job.public_id}" in response.content.decode()
    assert File.objects.get(pk=job.training_file.pk).deleted_at is None


# --- fine-tune jobs --------------------------------------------------------------


def test_a_new_job_shows_its_estimate_before_it_starts_and_then_starts(person):
    buyer = person("buyer")
    welcome_credit_grant(organization=buyer.organization)
    file = upload(buyer.organization)
    client = signed_in(buyer)
    form = {
        "model": TINY,
        "training_file": file.public_id,
        "training_type": "lora",
        "n_epochs": 1,
        "request_key": "k1",
    }

    estimate = client.post(reverse("portal:console-job-create"), {**form, "action": "estimate"})

    assert estimate.status_code == 200
    quote = estimate.context["quote"]
    assert quote.total_micros > 0
    assert f'data-figure="estimate">{Money(quote.total_micros, "USD")}' in estimate.content.decode()
    assert not FineTuneJob.objects.exists()  # only priced

    started = client.post(reverse("portal:console-job-create"), {**form, "action": "start"})

    job = FineTuneJob.objects.get(organization=buyer.organization)
    assert started.status_code == 302
    assert started["Location"] == reverse("portal:console-job", args=[job.public_id])
    assert (job.status, job.estimate_micros) == ("queued", quote.total_micros)
    again = client.post(reverse("portal:console-job-create"), {**form, "action": "start"})
    assert again["Location"] == started["Location"]  # the same form starts one job
    assert FineTuneJob.objects.filter(organization=buyer.organization).count() == 1


def test_a_job_short_of_credit_is_refused_with_the_missing_amount(person):
    buyer = person("buyer")  # no credit granted
    file = upload(buyer.organization)
    response = signed_in(buyer).post(
        reverse("portal:console-job-create"),
        {
            "model": TINY,
            "training_file": file.public_id,
            "training_type": "lora",
            "request_key": "k",
            "action": "start",
        },
    )
    assert response.status_code == 400
    assert "add at least" in response.context["short"]
    assert 'data-refusal="credit"' in response.content.decode()
    assert not FineTuneJob.objects.exists()


def test_a_bad_job_choice_is_refused_beside_its_field(person):
    buyer = person("buyer")
    welcome_credit_grant(organization=buyer.organization)
    file = upload(buyer.organization)
    client = signed_in(buyer)
    response = client.post(
        reverse("portal:console-job-create"),
        {
            "model": TINY,
            "training_file": file.public_id,
            "training_type": "lora",
            "suffix": "bad suffix!",
            "request_key": "k",
            "action": "start",
        },
    )
    assert response.status_code == 400
    assert "suffix" in response.context["form"].errors
    other_file = upload(person("buyer").organization)
    stolen = client.post(
        reverse("portal:console-job-create"),
        {
            "model": TINY,
            "training_file": other_file.public_id,
            "training_type": "lora",
            "request_key": "k",
            "action": "start",
        },
    )
    assert stolen.status_code == 400
    assert "training_file" in stolen.context["form"].errors  # not a choice of this org


def test_the_job_page_shows_loss_per_step_and_its_partial_polls_only_while_running(person):
    buyer = person("buyer")
    job = start_job(buyer.organization)
    FineTuneJob.objects.filter(pk=job.pk).update(status="running", total_steps=4)
    for step, loss in [(1, 2.5), (2, 1.75)]:
        jobs.finetune_job_progress(
            job_id=job.public_id,
            kind="training_step",
            message=f"Step {step}/4: training loss={loss:.4f}",
            at=timezone.now(),
            source_position=10_000 + step,
            step=step,
            total_steps=4,
            data={"step": step, "total_steps": 4, "loss": loss, "learning_rate": 1e-4},
        )
    client = signed_in(buyer)

    page = client.get(reverse("portal:console-job", args=[job.public_id]))
    partial = client.get(
        reverse("portal:console-job-progress", args=[job.public_id]), HTTP_HX_REQUEST="true"
    )

    body = page.content.decode()
    assert page.status_code == 200
    assert "Step 2 of 4" in body and "2.5000" in body and "1.7500" in body
    assert [row["train_loss"] for row in page.context["steps"]] == [2.5, 1.75]
    assert "<html" not in partial.content.decode()  # the fragment alone
    assert 'hx-trigger="every 3s"' in partial.content.decode()
    assert "1.7500" in partial.content.decode()
    FineTuneJob.objects.filter(pk=job.pk).update(status="succeeded")
    finished = client.get(reverse("portal:console-job-progress", args=[job.public_id]))
    assert "hx-trigger" not in finished.content.decode()  # nothing left to poll for


def test_jobs_of_another_organization_are_not_found_and_finance_may_not_cancel(person):
    buyer, stranger = person("buyer"), person("buyer")
    finance = person(org=buyer.organization, role="finance")
    mine, theirs = start_job(buyer.organization), start_job(stranger.organization)
    client = signed_in(buyer)
    for name in ("console-job", "console-job-progress"):
        assert client.get(reverse(f"portal:{name}", args=[theirs.public_id])).status_code == 404
    assert (
        client.post(reverse("portal:console-job-cancel", args=[theirs.public_id])).status_code
        == 404
    )
    assert FineTuneJob.objects.get(pk=theirs.pk).status == "queued"
    assert theirs.public_id not in client.get(reverse("portal:console-jobs")).content.decode()

    reader = signed_in(finance)
    page = reader.get(reverse("portal:console-job", args=[mine.public_id])).content.decode()
    assert "Cancel job" not in page
    assert "New fine-tune job" not in reader.get(reverse("portal:console-jobs")).content.decode()
    assert (
        reader.post(reverse("portal:console-job-cancel", args=[mine.public_id])).status_code == 403
    )
    assert reader.get(reverse("portal:console-job-create")).status_code == 403
    assert FineTuneJob.objects.get(pk=mine.pk).status == "queued"

    # a member cancels: queued, so nothing is billed and its order leaves the book
    member = signed_in(person(org=buyer.organization, role="member"))
    done = member.post(reverse("portal:console-job-cancel", args=[mine.public_id]), follow=True)
    assert "nothing was billed" in done.content.decode()
    mine.refresh_from_db()
    assert mine.status == "cancelled"
    assert Order.objects.get(pk=int(mine.order_ref.split("-")[-1])).state == "cancelled"


# --- orders and leases -----------------------------------------------------------


def test_orders_are_listed_shown_and_cancelled_by_their_own_organization_only(person):
    buyer, stranger = person("buyer"), person("buyer")
    finance = person(org=buyer.organization, role="finance")
    mine, theirs = raw_order(buyer.organization), raw_order(stranger.organization)
    client = signed_in(buyer)

    listing = client.get(reverse("portal:console-orders")).content.decode()
    assert f"Order {mine.pk}<" in listing and f"Order {theirs.pk}<" not in listing
    assert client.get(reverse("portal:console-order", args=[theirs.pk])).status_code == 404
    assert client.post(reverse("portal:console-order-cancel", args=[theirs.pk])).status_code == 404
    assert Order.objects.get(pk=theirs.pk).state == "open"

    reader = signed_in(finance)
    page = reader.get(reverse("portal:console-order", args=[mine.pk])).content.decode()
    assert "1.00 USD" in page and "Cancel order" not in page
    assert reader.post(reverse("portal:console-order-cancel", args=[mine.pk])).status_code == 403

    cancelled = client.post(reverse("portal:console-order-cancel", args=[mine.pk]), follow=True)
    assert "its reservation is released" in cancelled.content.decode()
    assert Order.objects.get(pk=mine.pk).state == "cancelled"
    again = client.post(reverse("portal:console-order-cancel", args=[mine.pk]), follow=True)
    assert again.status_code == 200  # cancelling a cancelled order changes nothing
    open_only = client.get(reverse("portal:console-orders"), {"state": "open"}).content.decode()
    assert f"Order {mine.pk}<" not in open_only
    assert client.get(reverse("portal:console-leases")).status_code == 200


# --- models ----------------------------------------------------------------------


def test_models_and_deployments_are_the_organizations_own_and_only_operators_stop(person):
    buyer, stranger = person("buyer"), person("buyer")
    finance = person(org=buyer.organization, role="finance")
    mine, theirs = start_job(buyer.organization), start_job(stranger.organization)
    FineTuneJob.objects.filter(pk__in=[mine.pk, theirs.pk]).update(status="succeeded")
    live, other = deployment(buyer.organization, mine), deployment(stranger.organization, theirs)
    client = signed_in(buyer)

    page = client.get(reverse("portal:console-models")).content.decode()
    assert mine.fine_tuned_model in page and live.public_id in page
    assert theirs.fine_tuned_model not in page and other.public_id not in page
    stop_other = reverse("portal:console-deployment-stop", args=[other.public_id])
    assert client.post(stop_other).status_code == 404
    assert Deployment.objects.get(pk=other.pk).status == "ready"

    reader = signed_in(finance)
    assert "Stop" not in reader.get(reverse("portal:console-models")).content.decode()
    stop_mine = reverse("portal:console-deployment-stop", args=[live.public_id])
    assert reader.post(stop_mine).status_code == 403

    stopped = client.post(stop_mine, follow=True)
    assert f"Stopped {live.public_id}" in stopped.content.decode()
    assert Deployment.objects.get(pk=live.pk).status == "stopped"


# --- every page: signed out, provider organizations ---------------------------------


CONSOLE_PAGES = [
    "console-usage",
    "console-jobs",
    "console-job-create",
    "console-orders",
    "console-leases",
    "console-files",
    "console-models",
]


@pytest.mark.parametrize("name", CONSOLE_PAGES)
def test_console_pages_need_a_buyer_member(person, name):
    url = reverse(f"portal:{name}")
    signed_out = Client().get(url)
    assert signed_out.status_code == 302 and "/sign-in/" in signed_out["Location"]
    assert signed_in(person("provider")).get(url).status_code == 404
    page = signed_in(person("buyer")).get(url)
    assert page.status_code == 200
    assert 'aria-label="Console"' in page.content.decode()  # the buyer's navigation


# --- the organization switcher -------------------------------------------------------


def test_a_person_in_two_organizations_switches_and_every_page_follows(person):
    first = person("buyer")
    second_org = person("buyer").organization
    from core import services as tenancy

    tenancy.membership_create(user=first.user, organization=second_org, role="member")
    theirs = upload(second_org)
    client = signed_in(first)
    page = client.get(reverse("portal:console-files")).content.decode()
    assert 'id="org-switch"' in page and theirs.public_id not in page

    switched = client.post(
        reverse("portal:organization-switch"), {"organization": second_org.pk}, follow=True
    )
    assert f"Now working in {second_org.name} as member" in switched.content.decode()
    page = client.get(reverse("portal:console-files")).content.decode()
    assert theirs.public_id in page
    assert (
        client.post(reverse("portal:console-file-delete", args=[theirs.public_id])).status_code
        == 302
    )  # a member of that organization now

    stranger_org = person("buyer").organization
    refused = client.post(
        reverse("portal:organization-switch"), {"organization": stranger_org.pk}, follow=True
    )
    assert "Select a valid choice" in refused.content.decode()
    assert refused.wsgi_request.session["portal_organization_id"] == second_org.pk


def test_work_pages_cost_the_same_queries_with_1_and_25_rows(person, django_assert_max_num_queries):
    counts: dict[str, list[int]] = {}
    for rows in (1, 25):
        who = person("buyer")
        org = who.organization
        job = start_job(org)
        for n in range(rows - 1):
            upload(org, name=f"train-{n}.jsonl")
            jobs.finetune_job_create(
                organization=org,
                request=jobs.JobRequest(
                    model=TINY, training_file=job.training_file.public_id, n_epochs=1
                ),
            )
        for _ in range(rows):
            raw_order(org)
        FineTuneJob.objects.filter(organization=org).update(status="succeeded")
        for n in range(rows):
            training_tokens(job, n=1, quantity=100, at=timezone.now() - timedelta(days=n % 5))
            jobs.finetune_job_progress(
                job_id=job.public_id,
                kind="training_step",
                message="step",
                at=timezone.now(),
                source_position=20_000 + rows * 1_000 + n,
                step=n,
                total_steps=rows,
                data={"step": n, "loss": 1.0},
            )
        client = signed_in(who)
        order = Order.objects.filter(organization=org).order_by("pk").first()
        assert order is not None
        pages = {
            "usage": reverse("portal:console-usage"),
            "usage-csv": reverse("portal:console-usage-csv"),
            "jobs": reverse("portal:console-jobs"),
            "job": reverse("portal:console-job", args=[job.public_id]),
            "job-progress": reverse("portal:console-job-progress", args=[job.public_id]),
            "job-new": reverse("portal:console-job-create"),
            "files": reverse("portal:console-files"),
            "models": reverse("portal:console-models"),
            "orders": reverse("portal:console-orders"),
            "order": reverse("portal:console-order", args=[order.pk]),
            "leases": reverse("portal:console-leases"),
        }
        for name, url in pages.items():
            # the price book is cached for a while: each page reads it afresh here, so
            # its cache's age does not differ between the two counts
            price_book_forget()
            with django_assert_max_num_queries(14), CaptureQueriesContext(connection) as seen:
                assert client.get(url).status_code == 200, name
            counts.setdefault(name, []).append(len(seen.captured_queries))
    for name, (few, many) in counts.items():
        assert few == many, f"{name}: {few} queries with 1 row, {many} with 25"
