"""Every page the portal has, as each person sees it, checked by axe-core against the
WCAG 2.2 A and AA rules (zero violations), at a desktop and a phone size, in light
and dark colour schemes; with no console error (a CSP violation shows there). A
screenshot of each is written to var/screenshots/ (the README shows a few)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.utils import timezone

from core import services
from exports.models import FinanceExport
from payments.models import TopUp
from pricing.welcome import welcome_credit_grant
from providers import demo as supply
from providers.models import Node, Offer
from tests.payments.conftest import SECRET_KEY
from tests.portal.conftest import AXE_OPTIONS, SCREENSHOTS, sign_in
from tests.portal.test_buyer_account_pages import card
from tests.portal.test_buyer_money_pages import make_credit_note, make_invoice
from tests.portal.test_buyer_work_pages import raw_order, start_job, training_tokens

pytestmark = pytest.mark.django_db(transaction=True)

SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


def check(page, name: str, size: str, scheme: str, errors: list[str]) -> None:
    results = Axe().run(page, options=AXE_OPTIONS)
    assert results.violations_count == 0, f"{name} ({size}, {scheme}):\n{results.generate_report()}"
    assert not errors, f"{name} ({size}, {scheme}): console errors {errors}"
    # Nothing wider than the screen: wide tables scroll inside their own region.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= SIZES[size]["width"], f"{name} ({size}): the page is {width}px wide"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}-{size}-{scheme}.png", full_page=True)


@contextmanager
def stripe_for_a_moment(settings, localstripe) -> Iterator[None]:
    saved = (settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE)
    settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE = SECRET_KEY, localstripe.url
    try:
        yield
    finally:
        settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE = saved


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_page_passes_axe_and_is_photographed(
    live_server, new_context, person, size, scheme, tmp_path, settings, localstripe
):
    settings.WORKLOADS_STORAGE_DIR = tmp_path / "files"
    buyer = person("buyer")
    welcome_credit_grant(organization=buyer.organization)
    job = start_job(buyer.organization)
    training_tokens(job, n=2, quantity=1_000, at=timezone.now() - timedelta(minutes=1))
    order = raw_order(buyer.organization)
    services.api_key_create(organization=buyer.organization, name="CI runner", role="member")
    person(org=buyer.organization, role="finance")
    invoice = make_invoice(buyer.organization, 1)
    make_credit_note(invoice, 1)
    top_up = TopUp.objects.create(
        organization=buyer.organization,
        amount_micros=50_000_000,
        currency="USD",
        source=TopUp.Source.PAYMENT_ELEMENT,
        request_key="axe",
    )
    provider = person("provider")
    supply.load(provider=provider.organization)
    operator = services.org_create(name="Operator", kind="both", is_operator=True)
    finance = person(org=operator, role="finance")
    FinanceExport.objects.create(
        kind="ar_aging", format="csv", requested_by=finance.email, created_at=timezone.now()
    )
    this_month = f"{timezone.now():%Y-%m}"

    def visit(who=None):
        context = new_context(viewport=SIZES[size], color_scheme=scheme)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        if who is not None:
            sign_in(page, live_server, who)
        return page, errors

    # signed out
    page, errors = visit()
    for name, path in [
        ("sign-in", "/sign-in/"),
        ("sign-up", "/sign-up/"),
        ("password-reset", "/password-reset/"),
        ("password-reset-sent", "/password-reset/sent/"),
        ("password-reset-bad-link", "/password-reset/MQ/bad-token/"),
    ]:
        page.goto(live_server.url + path)
        check(page, name, size, scheme, errors)
    page.goto(live_server.url + "/sign-up/")
    page.get_by_role("button", name="Create account").click()  # every field refused
    page.locator(".errorlist").first.wait_for()  # the answer, not the page it replaces
    check(page, "sign-up-errors", size, scheme, errors)

    # the buyer admin
    page, errors = visit(buyer)
    for name, path in [("console", "/console/"), ("keys", "/keys/"), ("team", "/team/")]:
        page.goto(live_server.url + path)
        check(page, name, size, scheme, errors)
    for name, path in [
        ("top-up", "/console/top-up"),
        ("top-up-waiting", f"/console/top-ups/{top_up.pk}/?redirect_status=succeeded"),
        ("auto-recharge", "/console/auto-recharge"),
        ("billing-details", "/console/billing-details"),
        ("order-new", "/console/orders/new"),
        ("two-factor", "/two-factor/"),
        ("two-factor-setup", "/two-factor/set-up"),
        ("invoices", "/console/invoices/"),
        ("invoice", f"/console/invoices/{invoice.pk}/"),
        ("usage", "/console/usage/"),
        ("jobs", "/console/jobs/"),
        ("job-new", "/console/jobs/new"),
        ("job", f"/console/jobs/{job.public_id}/"),
        ("orders", "/console/orders/"),
        ("order", f"/console/orders/{order.pk}/"),
        ("leases", "/console/leases/"),
        ("files", "/console/files/"),
        ("models", "/console/models/"),
    ]:
        page.goto(live_server.url + path)
        check(page, name, size, scheme, errors)
    page.goto(live_server.url + "/console/top-up")
    page.get_by_label("Another amount").check()
    page.get_by_role("button", name="Continue to payment").click()  # no amount typed
    page.locator(".errorlist").first.wait_for()
    page.wait_for_load_state()
    check(page, "top-up-errors", size, scheme, errors=[])  # a 400, logged in the console
    page.goto(live_server.url + "/console/auto-recharge")
    page.get_by_label("Add this much (USD)").fill("1.00")
    page.get_by_role("button", name="Save").click()
    page.locator(".errorlist").first.wait_for()
    page.wait_for_load_state()
    check(page, "auto-recharge-errors", size, scheme, errors=[])
    errors.clear()  # the two 400s above
    # the saved cards, read from localstripe (only for this page: the rest of the
    # console is photographed as a server without Stripe shows it)
    with stripe_for_a_moment(settings, localstripe):
        card(localstripe, buyer.organization)
        page.goto(live_server.url + "/console/payment-methods")
        page.locator("[data-card]").first.wait_for()
        check(page, "payment-methods", size, scheme, errors)
    page.goto(live_server.url + "/console/payment-methods")
    check(page, "payment-methods-not-set-up", size, scheme, errors)
    page.goto(live_server.url + "/console/billing-details")
    page.get_by_label("VAT or tax id").fill("DE12")
    page.get_by_role("button", name="Save billing details").click()
    page.locator("#id_address_error").wait_for()  # no address yet
    check(page, "billing-details-errors", size, scheme, errors=[])
    page.goto(live_server.url + "/console/orders/new")
    page.get_by_label("Most you pay per GPU-hour (USD)").fill("0")
    page.get_by_role("button", name="Place order").click()
    page.locator("#id_max_price_error").wait_for()
    check(page, "order-new-errors", size, scheme, errors=[])
    page.goto(live_server.url + "/two-factor/set-up")
    page.get_by_role("textbox", name="Code").fill("1")
    page.get_by_role("button", name="Confirm and turn on").click()
    page.locator("#id_code_error").wait_for()
    check(page, "two-factor-setup-errors", size, scheme, errors=[])
    errors.clear()  # the 400s above
    page.goto(live_server.url + "/keys/")
    page.get_by_role("link", name="Create API key").click()
    check(page, "key-dialog", size, scheme, errors)
    page.get_by_role("dialog").get_by_label("Name").fill("notebook")
    page.get_by_role("button", name="Create key").click()
    page.get_by_role("button", name="Copy").wait_for()
    check(page, "key-created", size, scheme, errors)
    page.goto(live_server.url + "/keys/new")
    check(page, "key-new-page", size, scheme, errors)
    page.goto(live_server.url + "/provider/")
    check(page, "not-found", size, scheme, errors=[])  # the 404 logs itself in the console

    # the provider admin, the operator's finance staff
    page, errors = visit(provider)
    page.goto(live_server.url + "/provider/")
    check(page, "provider-overview", size, scheme, errors)
    node = Node.objects.get(organization=provider.organization)
    offer = Offer.objects.filter(organization=provider.organization).order_by("pk").first()
    for name, path in [
        ("provider-sites", "/provider/sites/"),
        ("provider-nodes", "/provider/nodes/"),
        ("provider-node", f"/provider/nodes/{node.pk}/"),
        ("provider-offers", "/provider/offers/?status=active"),
        ("provider-offer", f"/provider/offers/{offer.pk}/"),
        ("provider-leases", "/provider/leases/"),
        ("provider-agent-keys", "/provider/agent-keys/"),
        ("provider-earnings", "/provider/earnings/"),
        ("provider-statement", f"/provider/earnings/{this_month}/"),
        ("provider-earnings-breakdown", "/provider/earnings/breakdown/"),
        ("provider-node-history", f"/provider/nodes/{node.pk}/history?hours=1"),
        ("provider-payouts", "/provider/payouts/"),
    ]:
        page.goto(live_server.url + path)
        check(page, name, size, scheme, errors)
    page.goto(live_server.url + "/provider/sites/")
    page.get_by_role("button", name="Create site").click()  # every field refused
    page.locator("#id_name_error").wait_for()
    check(page, "provider-site-errors", size, scheme, errors)
    page.goto(live_server.url + "/provider/offers/new")
    check(page, "provider-offer-new", size, scheme, errors)
    page.get_by_label("Price per GPU-hour").fill("0")
    page.get_by_role("button", name="List offer").click()
    page.locator("#id_price_error").wait_for()
    check(page, "provider-offer-errors", size, scheme, errors)
    page.goto(live_server.url + "/provider/agent-keys/")
    page.get_by_label("Name").fill("rack 1")
    page.get_by_role("button", name="Create agent key").click()
    page.get_by_role("button", name="Copy").wait_for()
    check(page, "provider-agent-key-created", size, scheme, errors)
    page, errors = visit(finance)
    page.goto(live_server.url + "/")
    check(page, "finance-home", size, scheme, errors)
    for name, path in [
        ("finance-trial-balance", "/finance/trial-balance/"),
        ("finance-journal", "/finance/journal/"),
        ("finance-accounts", "/finance/accounts/"),
        ("finance-invoices", "/finance/invoices/"),
        ("finance-invoice", f"/finance/invoices/{invoice.pk}/"),
        ("finance-close", "/finance/close/"),
        ("finance-liability", "/finance/liability/"),
        ("finance-aging", "/finance/aging/"),
        ("finance-reconciliation", "/finance/reconciliation/"),
        ("finance-payouts", "/finance/payouts/"),
        ("finance-exports", "/finance/exports/"),
        ("finance-statements", "/finance/statements/"),
        ("finance-statement", f"/finance/statements/{provider.organization.pk}/{this_month}/"),
    ]:
        page.goto(live_server.url + path)
        check(page, name, size, scheme, errors)
    page.goto(live_server.url + "/finance/close/")
    page.get_by_role("button", name="Close the month").click()  # every field refused
    page.locator("#id_confirm_error").wait_for()
    check(page, "finance-close-errors", size, scheme, errors=[])  # a 400, logged
    errors.clear()
    page.goto(live_server.url + "/finance/exports/")
    page.get_by_label("Kind").select_option("usage_detail")
    page.get_by_role("button", name="Request export").click()
    page.locator(".errorlist").first.wait_for()
    check(page, "finance-export-errors", size, scheme, errors=[])
    errors.clear()
    page.goto(live_server.url + f"/finance/invoices/{invoice.pk}/")
    page.get_by_role("button", name="Mark paid").click()  # no reference, not confirmed
    page.locator("#id_paid-payment_reference_error").wait_for()
    check(page, "finance-invoice-mark-paid-errors", size, scheme, errors=[])
    errors.clear()
    page.goto(live_server.url + "/keys/new")
    check(page, "forbidden", size, scheme, errors=[])  # a 403, logged likewise


def test_axe_as_these_tests_run_it_still_reports_each_violation_in_full(page):
    # given a page with two unlabelled images and a field without a label
    page.set_content(
        '<html lang="en"><head><title>t</title></head><body><main>'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><img src="data:,">'
        '<input type="text"></main></body></html>'
    )

    # when axe runs with the options the portal's checks use
    results = Axe().run(page, options=AXE_OPTIONS)

    # then both rules are reported, each with every node it failed on
    found = {v["id"]: len(v["nodes"]) for v in results.response["violations"]}
    assert found.get("image-alt") == 2
    assert found.get("label") == 1
