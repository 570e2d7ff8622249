"""The portal's pages through Django's test client: who may open what, forms that
say what is wrong beside the field, CSRF, and query counts that do not grow with the
rows behind a page."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from core import services
from core.models import ApiKey, Membership
from core.money import Money
from pricing.welcome import welcome_credit_grant

PAGES = ["portal:keys", "portal:team"]


def signed_in(who) -> Client:
    client = Client()
    client.force_login(who.user)
    return client


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name",
    ["portal:keys", "portal:team", "portal:console", "portal:provider", "portal:overview"],
)
def test_a_signed_out_visit_is_sent_to_sign_in(name):
    url = reverse(name)
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('portal:sign-in')}?next={url}"


@pytest.mark.django_db
def test_root_shows_sign_in_then_the_members_home(person):
    assert Client().get("/")["Location"] == reverse("portal:sign-in")
    assert signed_in(person("buyer")).get("/")["Location"] == reverse("portal:console")
    assert signed_in(person("provider")).get("/")["Location"] == reverse("portal:provider")


@pytest.mark.django_db
def test_sign_up_creates_the_org_and_its_admin_and_signs_in():
    client = Client()
    response = client.post(
        reverse("portal:sign-up"),
        {
            "email": "Ada@Example.com",
            "password": "a long enough password",
            "organization_name": "Analytical Engines",
            "kind": "buyer",
        },
    )
    assert response.status_code == 302
    membership = Membership.objects.select_related("organization", "user").get()
    assert membership.user.username == "ada@example.com"
    assert membership.role == "admin"
    assert membership.organization.kind == "buyer"
    assert client.get(reverse("portal:console")).status_code == 200


@pytest.mark.django_db
def test_sign_up_errors_sit_beside_their_fields(person):
    taken = person("buyer")
    response = Client().post(
        reverse("portal:sign-up"),
        {
            "email": taken.email,
            "password": "short",
            "organization_name": taken.organization.name,
            "kind": "buyer",
        },
    )
    assert response.status_code == 200
    form = response.context["form"]
    assert "at least 8 characters" in form.errors["password"][0]
    html = response.content.decode()
    # The error is inside the field's own group, next to its input, and marks it invalid.
    assert re.search(r'id="id_password_error".*?<input[^>]*aria-invalid="true"', html, re.S)

    # The services' refusals land beside the field they name too.
    response = Client().post(
        reverse("portal:sign-up"),
        {
            "email": "new@example.com",
            "password": "a long enough password",
            "organization_name": taken.organization.name,
            "kind": "buyer",
        },
    )
    assert "exists already" in response.context["form"].errors["organization_name"][0]
    response = Client().post(
        reverse("portal:sign-up"),
        {
            "email": taken.email,
            "password": "a long enough password",
            "organization_name": "Fresh Org",
            "kind": "buyer",
        },
    )
    assert "account for" in response.context["form"].errors["email"][0]
    assert Membership.objects.count() == 1


@pytest.mark.django_db
def test_another_orgs_key_and_member_answer_404(person):
    mine, theirs = person("buyer"), person("buyer")
    their_key = services.api_key_create(organization=theirs.organization, name="x").api_key
    client = signed_in(mine)

    assert client.post(reverse("portal:key-revoke", args=[their_key.pk])).status_code == 404
    assert ApiKey.objects.get(pk=their_key.pk).revoked_at is None
    for name in ("portal:member-role", "portal:member-remove"):
        url = reverse(name, args=[theirs.membership.pk])
        assert client.post(url, {"role": "member"}).status_code == 404
    assert Membership.objects.get(pk=theirs.membership.pk).role == "admin"


@pytest.mark.django_db
def test_a_provider_has_no_buyer_console_and_a_buyer_no_provider_overview(person):
    assert signed_in(person("provider")).get(reverse("portal:console")).status_code == 404
    assert signed_in(person("buyer")).get(reverse("portal:provider")).status_code == 404
    both = signed_in(person("both"))
    assert both.get(reverse("portal:console")).status_code == 200
    assert both.get(reverse("portal:provider")).status_code == 200


@pytest.mark.django_db
def test_only_admins_write_keys_and_team(person):
    admin = person("buyer")
    member = person(org=admin.organization, role="member")
    client = signed_in(member)
    key = services.api_key_create(organization=admin.organization, name="x").api_key

    assert client.get(reverse("portal:keys")).status_code == 200
    assert b"Create API key" not in client.get(reverse("portal:keys")).content
    assert (
        client.post(reverse("portal:key-create"), {"name": "k", "role": "member"}).status_code
        == 403
    )
    assert client.post(reverse("portal:key-revoke", args=[key.pk])).status_code == 403
    assert (
        client.post(
            reverse("portal:member-invite"), {"email": "a@b.co", "role": "member"}
        ).status_code
        == 403
    )
    url = reverse("portal:member-role", args=[admin.membership.pk])
    assert client.post(url, {"role": "member"}).status_code == 403


@pytest.mark.django_db
def test_csrf_is_enforced_on_portal_forms(person):
    admin = person("buyer")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin.user)

    response = client.post(reverse("portal:key-create"), {"name": "k", "role": "member"})

    assert response.status_code == 403
    assert not ApiKey.objects.filter(organization=admin.organization).exists()
    # The same form with the token from the page goes through.
    page = client.get(reverse("portal:keys"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]
    response = client.post(
        reverse("portal:key-create"), {"name": "k", "role": "member", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 200
    assert ApiKey.objects.filter(organization=admin.organization).count() == 1


@pytest.mark.django_db
def test_the_key_page_shows_the_key_once_and_stores_only_its_hash(person):
    client = signed_in(person("buyer"))

    response = client.post(reverse("portal:key-create"), {"name": "ci", "role": "member"})

    raw = response.context["created"].raw_key
    assert raw in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert raw not in client.get(reverse("portal:keys")).content.decode()
    assert response.context["created"].api_key.role == "member"


@pytest.mark.django_db
def test_a_bad_key_form_shows_its_errors_in_the_dialog_for_htmx(person):
    client = signed_in(person("buyer"))

    response = client.post(
        reverse("portal:key-create"), {"name": "", "role": "owner"}, HTTP_HX_REQUEST="true"
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="key-dialog-body"')  # the partial alone
    assert "This field is required." in html
    assert "Select a valid choice. owner is not one of the available choices." in html


@pytest.mark.django_db
def test_invite_mails_a_set_password_link_and_the_person_can_sign_in(person):
    admin = person("buyer")
    client = signed_in(admin)

    response = client.post(
        reverse("portal:member-invite"), {"email": "Grace@Example.com", "role": "finance"}
    )

    assert response.status_code == 302
    joined = Membership.objects.get(
        organization=admin.organization, user__email="grace@example.com"
    )
    assert joined.role == "finance"
    assert not joined.user.has_usable_password()
    (message,) = mail.outbox
    assert message.to == ["grace@example.com"]
    link = re.search(r"http://testserver(/password-reset/\S+/)", message.body)[1]
    newcomer = Client()
    form_page = newcomer.get(link, follow=True)
    set_url = form_page.redirect_chain[-1][0]
    done = newcomer.post(
        set_url, {"new_password1": "a brand new secret", "new_password2": "a brand new secret"}
    )
    assert done.status_code == 302
    assert newcomer.login(username="grace@example.com", password="a brand new secret")
    # Inviting them again is refused beside the email field.
    again = client.post(
        reverse("portal:member-invite"), {"email": "grace@example.com", "role": "member"}
    )
    assert "member already" in again.context["invite_form"].errors["email"][0]


@pytest.mark.django_db
def test_the_last_admin_cannot_be_demoted_or_removed(person):
    admin = person("buyer")
    client = signed_in(admin)

    client.post(reverse("portal:member-role", args=[admin.membership.pk]), {"role": "member"})
    client.post(reverse("portal:member-remove", args=[admin.membership.pk]))

    assert Membership.objects.get(pk=admin.membership.pk).role == "admin"
    page = client.get(reverse("portal:team")).content.decode()
    assert "keeps at least one admin" in page


@pytest.mark.django_db
def test_password_reset_mails_a_link(person):
    who = person("buyer")
    response = Client().post(reverse("portal:password-reset"), {"email": who.email})
    assert response.status_code == 302
    (message,) = mail.outbox
    assert "/password-reset/" in message.body


@pytest.mark.django_db
def test_the_console_shows_credit_spend_and_runway(person):
    from datetime import timedelta

    from django.utils import timezone

    from ledger import selectors as books

    buyer = person("buyer")
    welcome_credit_grant(organization=buyer.organization)
    overview = books.credit_overview(organization=buyer.organization, currency="USD")
    assert overview.available_micros > 0 and overview.runway is None

    html = signed_in(buyer).get(reverse("portal:console")).content.decode()

    assert f"{overview.available_micros // 1_000_000}.00 USD" in html
    assert "No recent spend" in html
    # runway: what is left over what the last day burned
    burning = books.CreditOverview(
        "USD", 30_000_000, 0, 0, 0, 10_000_000, timezone.now(), has_account=True
    )
    assert burning.runway == timedelta(days=3)


# --- query counts: the same with 1 row and with 200 behind a page --------------


def _fill(organization, rows: int) -> None:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    for n in range(rows):
        services.api_key_create(organization=organization, name=f"key {n}")
        user = User.objects.create_user(username=f"m{n}-{organization.pk}@example.com")
        services.membership_create(user=user, organization=organization, role="member")


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["both"])
def test_every_page_costs_the_same_queries_with_1_and_200_rows(
    person, django_assert_max_num_queries, kind
):
    counts: dict[str, list[int]] = {}
    for rows in (1, 200):
        who = person(kind)
        _fill(who.organization, rows)
        client = signed_in(who)
        for name in ("portal:keys", "portal:team", "portal:console", "portal:provider"):
            from django.db import connection
            from django.test.utils import CaptureQueriesContext

            with django_assert_max_num_queries(12), CaptureQueriesContext(connection) as seen:
                assert client.get(reverse(name)).status_code == 200
            counts.setdefault(name, []).append(len(seen.captured_queries))
    for name, (few, many) in counts.items():
        assert few == many, f"{name}: {few} queries with 1 row, {many} with 200"


@pytest.mark.django_db
def test_the_demos_people_sign_in_with_the_password_printed_each_run():
    from config.management.commands.demo import _person

    organization = services.org_create(name="Demo buyer", kind="buyer")
    first = _person(organization, "buyer@acme.example", "admin")
    second = _person(organization, "buyer@acme.example", "admin")

    assert first != second
    assert not Client().login(username="buyer@acme.example", password=first)
    assert Client().login(username="buyer@acme.example", password=second)
    assert Membership.objects.get(user__username="buyer@acme.example").role == "admin"


@pytest.mark.django_db(transaction=True)
def test_the_provider_overview_counts_leased_gpu_hours_and_net_earnings(person):
    from datetime import timedelta

    from core.followers import followers_run_until_idle
    from ledger import selectors as books
    from ledger import services as billing
    from marketplace import demo as market
    from marketplace import selectors as leases
    from marketplace.models import Lease
    from providers import demo as supply

    provider, buyer = person("provider"), person("buyer")
    supply.load(provider=provider.organization)
    billing.credits_grant(
        organization=buyer.organization,
        amount_micros=25_000_000,
        currency="USD",
        reason="test credits",
        transfer_id="test:credits",
    )
    market.load(buyer=buyer.organization, provider=provider.organization)
    followers_run_until_idle()
    ended = Lease.objects.get(provider=provider.organization, state="ended")
    ran = int((ended.ended_at - ended.started_at).total_seconds())

    # the ended lease, whole and half of it; none of it on a buyer's (absent) GPUs
    assert ran == 3600
    whole = leases.gpu_seconds_leased(
        provider=provider.organization, since=ended.started_at, until=ended.ended_at
    )
    assert whole == ended.gpu_count * ran
    half = ended.started_at + timedelta(seconds=ran // 2)
    assert leases.gpu_seconds_leased(
        provider=provider.organization, since=ended.started_at, until=half
    ) == ended.gpu_count * (ran // 2)
    assert (
        leases.gpu_seconds_leased(provider=buyer.organization, since=ended.started_at, until=half)
        == 0
    )
    # the settled hour earned the lease price; the buyer paid it plus the platform's fee
    earnings = books.earnings_overview(
        organization=provider.organization, currency="USD", now=ended.ended_at
    )
    assert earnings.unpaid_micros == ended.price_per_gpu_hour_micros * ended.gpu_count
    assert ended.billed_micros > earnings.unpaid_micros
    page = signed_in(provider).get(reverse("portal:provider")).content.decode()
    assert f'data-figure="unpaid">{Money(earnings.unpaid_micros, "USD")}' in page
    assert page.count("health-healthy") == 2  # both demo nodes, with their health


@pytest.mark.django_db
def test_portal_pages_carry_a_csp_without_inline_script():
    response = Client().get(reverse("portal:sign-in"))

    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in response.content.decode()  # every script is a static file
