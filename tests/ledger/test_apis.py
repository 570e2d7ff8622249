"""The ledger's HTTP endpoints: tenancy, roles, input validation, idempotency,
the journal's period filter and pagination, and the trial balance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.models import Event, IdempotentRequest
from core.tenancy import Caller
from ledger import selectors, services
from ledger.engine import EntryRequest, ledger_execute
from ledger.models import Account, Balance, Hold, Posting
from ledger.projection import BalanceState

pytestmark = pytest.mark.django_db

USD = 1_000_000  # micro-units in one dollar

# --- helpers ----------------------------------------------------------------


def credit_account(org, currency: str = "USD") -> Account:
    return services.account_open(organization=org, kind=Account.Kind.CREDIT, currency=currency)


def platform(kind: str, currency: str = "USD") -> Account:
    return services.platform_account(kind=kind, currency=currency)


def grant(org, micros: int, *, transfer_id: str, currency: str = "USD", reason: str = "promo"):
    return services.credits_grant(
        organization=org,
        amount_micros=micros,
        currency=currency,
        reason=reason,
        transfer_id=transfer_id,
    )


def hold(account: Account, to: Account, micros: int, hold_id: str) -> None:
    services.hold_create(
        hold_id=hold_id,
        debit_account_id=account.pk,
        credit_account_id=to.pk,
        amount_micros=micros,
        currency=account.currency,
        timeout=timedelta(hours=1),
    )


def books() -> dict[str, Any]:
    """Everything a request could change in the ledger, to compare before and after."""
    return {
        "balances": list(
            Balance.objects.order_by("account_id").values_list(
                "account_id",
                "debits_posted",
                "credits_posted",
                "debits_pending",
                "credits_pending",
                "position",
            )
        ),
        "limits": list(Account.objects.order_by("pk").values_list("pk", "overdraft_limit_micros")),
        "postings": Posting.objects.count(),
        "events": Event.objects.count(),
        "holds": list(Hold.objects.order_by("pk").values_list("pk", "state")),
    }


def adjust(client, body: Any, key: str | None = "adj-1"):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post("/api/v1/journal/adjustments", body, format="json", **headers)


def error_fields(response) -> dict[str, list[str]]:
    return response.json()["error"]["details"].get("fields", {})


@pytest.fixture
def funded(cast):
    """Buyer A with 25.00 USD of credit, 5.00 of it held; Buyer B with 10.00."""
    grant(cast.buyer_a, 25 * USD, transfer_id="seed-a")
    grant(cast.buyer_b, 10 * USD, transfer_id="seed-b")
    hold(credit_account(cast.buyer_a), platform(Account.Kind.REVENUE), 5 * USD, "lease-a")
    platform(Account.Kind.ADJUSTMENTS)  # opened now, so that tests' snapshots include it
    return cast


def adjustment_body(debit: Account, credit: Account, amount: str = "5.00", **extra) -> dict:
    return {
        "currency": "USD",
        "reason": "refund for a failed lease",
        "legs": [
            {"account": debit.pk, "side": "debit", "amount": amount},
            {"account": credit.pk, "side": "credit", "amount": amount},
        ],
        **extra,
    }


# --- accounts ---------------------------------------------------------------


def test_accounts_list_shows_the_callers_accounts_with_balances(funded):
    cast = funded
    mine = credit_account(cast.buyer_a)

    response = cast.client(cast.buyer_a, role="member").get("/api/v1/accounts/")

    assert response.status_code == 200
    results = response.json()["results"]
    assert [row["id"] for row in results] == [mine.pk]
    row = results[0]
    assert row["organization"] == cast.buyer_a.pk
    assert (row["kind"], row["currency"], row["normal_side"]) == ("credit", "USD", "credit")
    assert (row["posted_micros"], row["posted"]) == (25 * USD, "25.00")
    assert (row["pending_micros"], row["pending"]) == (5 * USD, "5.00")
    assert (row["available_micros"], row["available"]) == (20 * USD, "20.00")
    assert (row["overdraft_limit_micros"], row["overdraft_limit"]) == (0, "0.00")


def test_platform_finance_also_sees_the_platform_accounts(funded):
    cast = funded
    promo = platform(Account.Kind.PROMO)

    rows = cast.finance.get("/api/v1/accounts/").json()["results"]

    by_id = {row["id"]: row for row in rows}
    assert by_id[promo.pk]["organization"] is None
    assert by_id[promo.pk]["normal_side"] == "debit"
    assert by_id[promo.pk]["posted"] == "35.00"
    assert credit_account(cast.buyer_a).pk not in by_id  # "the caller org's accounts"


def test_balances_in_sql_agree_with_the_ledgers_balance_state(funded):
    cast = funded
    # pending on both sides of a debit-normal account as well
    hold(credit_account(cast.buyer_b), platform(Account.Kind.STRIPE_CLEARING), 3 * USD, "h-b")
    caller = _caller(cast.operator)

    accounts = list(selectors.accounts_for_caller(caller=caller)) + [
        selectors.account_get(caller=caller, account_id=credit_account(org).pk)
        for org in (cast.buyer_a, cast.buyer_b)
    ]

    assert len(accounts) >= 5
    for account in accounts:
        b = account.balance
        state = BalanceState(
            account_id=account.pk,
            currency=account.currency,
            normal_side=account.normal_side,
            debits_posted=b.debits_posted,
            credits_posted=b.credits_posted,
            debits_pending=b.debits_pending,
            credits_pending=b.credits_pending,
        )
        assert account.posted_micros == state.posted, account
        assert account.available_micros == state.available, account
        assert account.posted_micros - account.pending_micros == state.available


def _caller(org, role: str = "finance") -> Caller:
    return Caller(organization=org, role=role)


def test_account_detail(funded):
    cast = funded
    mine = credit_account(cast.buyer_a)

    response = cast.client(cast.buyer_a).get(f"/api/v1/accounts/{mine.pk}/")

    assert response.status_code == 200
    assert response.json()["available"] == "20.00"


@pytest.mark.parametrize("account_id", ["999999", "99999999999999999999999999"])
def test_an_account_that_does_not_exist_is_404(cast, account_id):
    response = cast.client(cast.buyer_a).get(f"/api/v1/accounts/{account_id}/")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_accounts_list_makes_the_same_queries_for_one_row_or_many(cast):
    client = cast.finance
    platform(Account.Kind.PROMO)
    client.get("/api/v1/accounts/")  # warm: last_used_at written once
    with CaptureQueriesContext(connection) as few:
        assert client.get("/api/v1/accounts/").status_code == 200
    for kind in (
        Account.Kind.REVENUE,
        Account.Kind.FEES,
        Account.Kind.ROUNDING,
        Account.Kind.TAX_PAYABLE,
        Account.Kind.ADJUSTMENTS,
    ):
        platform(kind)
    with CaptureQueriesContext(connection) as many:
        rows = client.get("/api/v1/accounts/").json()["results"]
    assert len(rows) == 6
    assert len(many) == len(few)


# --- tenancy and roles ------------------------------------------------------


def _endpoints(cast) -> list[tuple[str, str, Any]]:
    """Every endpoint, aimed at Buyer A's things: (method, url, body)."""
    mine = credit_account(cast.buyer_a)
    adjustments = platform(Account.Kind.ADJUSTMENTS)
    return [
        ("get", "/api/v1/accounts/", None),
        ("get", f"/api/v1/accounts/{mine.pk}/", None),
        (
            "post",
            f"/api/v1/accounts/{mine.pk}/credit-limit",
            {"amount": "1000.00", "reason": "raise it"},
        ),
        ("get", "/api/v1/journal/", None),
        ("get", f"/api/v1/journal/?account={mine.pk}", None),
        ("post", "/api/v1/journal/adjustments", adjustment_body(adjustments, mine, "500.00")),
        ("get", "/api/v1/trial-balance/", None),
    ]


def _call(client, method: str, url: str, body: Any):
    if method == "get":
        return client.get(url)
    return client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="k-cross")


@pytest.mark.parametrize("intruder", ["buyer_b", "provider_a"])
def test_another_org_gets_404_or_403_on_every_endpoint_and_changes_nothing(funded, intruder):
    cast = funded
    client = cast.client(getattr(cast, intruder), role="admin")
    mine = credit_account(cast.buyer_a)
    expected = {
        "/api/v1/accounts/": 200,  # its own (empty) list
        "/api/v1/journal/": 200,  # its own (empty) journal
        "/api/v1/trial-balance/": 403,
    }
    before = books()

    for method, url, body in _endpoints(cast):
        response = _call(client, method, url, body)
        wanted = expected.get(url, 403 if method == "post" else 404)
        assert response.status_code == wanted, (method, url, response.json())
        if wanted != 200:
            assert set(response.json()["error"]) == {"code", "message", "details"}
        elif url == "/api/v1/accounts/":  # its own accounts only
            rows = response.json()["results"]
            assert {row["organization"] for row in rows} <= {client.organization.pk}
            assert mine.pk not in {row["id"] for row in rows}
        else:  # its own postings only
            assert mine.pk not in {row["account"] for row in response.json()["results"]}

    assert books() == before
    assert not IdempotentRequest.objects.exists()


def test_a_journal_without_account_shows_only_the_callers_postings(funded):
    cast = funded
    lines = cast.client(cast.buyer_b).get("/api/v1/journal/").json()["results"]

    assert [line["transfer_id"] for line in lines] == ["seed-b"]
    assert {line["account"] for line in lines} == {credit_account(cast.buyer_b).pk}


def test_platform_finance_sees_the_whole_journal_and_any_account(funded):
    cast = funded
    promo = platform(Account.Kind.PROMO)

    everything = cast.finance.get("/api/v1/journal/?limit=200").json()["results"]
    promo_lines = cast.finance.get(f"/api/v1/journal/?account={promo.pk}").json()["results"]
    theirs = cast.finance.get(f"/api/v1/accounts/{credit_account(cast.buyer_a).pk}/")

    assert len(everything) == Posting.objects.count() == 4
    assert {line["transfer_id"] for line in promo_lines} == {"seed-a", "seed-b"}
    assert theirs.status_code == 200


@pytest.mark.parametrize("index", range(7))
def test_anonymous_gets_401_in_the_error_shape_everywhere(funded, index):
    cast = funded
    method, url, body = _endpoints(cast)[index]
    before = books()

    response = _call(cast.anonymous, method, url, body)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert set(response.json()["error"]) == {"code", "message", "details"}
    assert books() == before


@pytest.mark.parametrize(
    ("org", "role"),
    [
        ("buyer_a", "finance"),
        ("buyer_a", "admin"),
        ("buyer_a", "member"),
        ("provider_a", "finance"),
        ("operator", "member"),
    ],
)
def test_only_operator_finance_reads_the_trial_balance_or_moves_money(funded, org, role):
    cast = funded
    client = cast.client(getattr(cast, org), role=role)
    mine = credit_account(cast.buyer_a)
    before = books()

    trial = client.get("/api/v1/trial-balance/")
    adjusted = adjust(client, adjustment_body(platform(Account.Kind.ADJUSTMENTS), mine))
    limit = client.post(
        f"/api/v1/accounts/{mine.pk}/credit-limit",
        {"amount": "50.00", "reason": "x"},
        format="json",
    )

    for response in (trial, adjusted, limit):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
    assert books() == before


# --- the trial balance ------------------------------------------------------


def test_trial_balance_debits_equal_credits_after_grants_and_adjustments(funded):
    cast = funded
    grant(cast.buyer_a, 7 * USD, transfer_id="eur-a", currency="EUR")
    response = adjust(
        cast.finance,
        adjustment_body(credit_account(cast.buyer_a), platform(Account.Kind.ADJUSTMENTS), "2.50"),
    )
    assert response.status_code == 201

    report = cast.finance.get("/api/v1/trial-balance/").json()

    totals = {t["currency"]: t for t in report["totals"]}
    assert set(totals) == {"EUR", "USD"}
    assert totals["USD"]["debits_micros"] == totals["USD"]["credits_micros"] == 37_500_000
    assert totals["USD"]["debits"] == "37.50" and totals["USD"]["balanced"] is True
    assert totals["EUR"]["debits_micros"] == totals["EUR"]["credits_micros"] == 7 * USD
    rows = {(r["owner"], r["kind"], r["currency"]): r for r in report["accounts"]}
    buyer = rows[("Buyer A", "credit", "USD")]
    assert (buyer["debits"], buyer["credits"], buyer["balance"]) == ("2.50", "25.00", "22.50")
    assert rows[("platform", "promo", "USD")]["balance"] == "35.00"
    assert rows[("platform", "adjustments", "USD")]["balance_micros"] == -2_500_000
    # pending holds are not in the books
    assert rows[("platform", "revenue", "USD")]["credits_micros"] == 0
    for code in ("USD", "EUR"):
        assert sum(r["debits_micros"] for r in report["accounts"] if r["currency"] == code) == sum(
            r["credits_micros"] for r in report["accounts"] if r["currency"] == code
        )
    assert report["position"] == Event.objects.order_by("-position").first().position


def test_trial_balance_for_one_currency(funded):
    cast = funded
    grant(cast.buyer_a, 7 * USD, transfer_id="eur-a", currency="EUR")

    report = cast.finance.get("/api/v1/trial-balance/?currency=EUR").json()

    assert {r["currency"] for r in report["accounts"]} == {"EUR"}
    assert [t["currency"] for t in report["totals"]] == ["EUR"]


def test_trial_balance_refuses_an_unknown_currency(cast):
    response = cast.finance.get("/api/v1/trial-balance/?currency=XYZ")

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"parameter": "currency"}


# --- adjustments ------------------------------------------------------------


def test_finance_posts_an_adjustment(funded):
    cast = funded
    mine = credit_account(cast.buyer_a)
    adjustments = platform(Account.Kind.ADJUSTMENTS)

    response = adjust(cast.finance, adjustment_body(mine, adjustments, "12.345678"), key="refund-7")

    assert response.status_code == 201
    body = response.json()
    assert body["transfer_id"] == f"adj:{cast.operator.pk}:refund-7"
    assert body["kind"] == "adjustment"
    assert body["description"] == "refund for a failed lease"
    assert body["legs"] == [
        {"account": mine.pk, "side": "debit", "amount_micros": 12_345_678, "amount": "12.345678"},
        {
            "account": adjustments.pk,
            "side": "credit",
            "amount_micros": 12_345_678,
            "amount": "12.345678",
        },
    ]
    event = Event.objects.get(position=body["position"])
    assert event.metadata["actor"].startswith(f"org:{cast.operator.pk}:key:")
    assert (
        selectors.account_get(caller=_caller(cast.buyer_a), account_id=mine.pk).available_micros
        == 20 * USD - 12_345_678
    )


def test_the_same_key_and_body_replays_the_first_response(funded):
    cast = funded
    body = adjustment_body(credit_account(cast.buyer_a), platform(Account.Kind.ADJUSTMENTS))
    first = adjust(cast.finance, body)
    after_first = books()

    again = adjust(cast.finance, body)

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert books() == after_first


@pytest.mark.parametrize(
    "change",
    [{"reason": "another reason"}, {"amount": "6.00"}],
)
def test_the_same_key_with_another_body_is_422(funded, change):
    cast = funded
    mine, adjustments = credit_account(cast.buyer_a), platform(Account.Kind.ADJUSTMENTS)
    assert adjust(cast.finance, adjustment_body(mine, adjustments)).status_code == 201
    after_first = books()
    other = adjustment_body(mine, adjustments, change.get("amount", "5.00"))
    other["reason"] = change.get("reason", other["reason"])

    response = adjust(cast.finance, other)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert books() == after_first


@pytest.mark.parametrize("same_body", [True, False])
def test_the_ledger_refuses_to_post_a_key_twice_even_without_the_stored_response(funded, same_body):
    cast = funded
    body = adjustment_body(credit_account(cast.buyer_a), platform(Account.Kind.ADJUSTMENTS))
    first = adjust(cast.finance, body)
    IdempotentRequest.objects.all().delete()  # as if the stored response were lost
    after_first = books()
    if not same_body:
        body["reason"] = "a different story"

    again = adjust(cast.finance, body)

    if same_body:
        assert again.status_code == 201
        assert again.json() == first.json()
    else:
        assert again.status_code == 422
        assert again.json()["error"]["code"] == "idempotency_key_reused"
    assert Posting.objects.count() == after_first["postings"]
    assert books()["balances"] == after_first["balances"]


def test_an_adjustment_that_overdraws_prepaid_credit_is_402_and_can_be_retried(funded):
    cast = funded
    mine, adjustments = credit_account(cast.buyer_a), platform(Account.Kind.ADJUSTMENTS)
    body = adjustment_body(mine, adjustments, "20.01")  # 20.00 available
    before = books()

    refused = adjust(cast.finance, body, key="big")

    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "insufficient_funds"
    assert books() == before
    grant(cast.buyer_a, 1 * USD, transfer_id="top-up")
    assert adjust(cast.finance, body, key="big").status_code == 201


def test_an_adjustment_with_a_hashed_key(funded):
    cast = funded
    body = adjustment_body(credit_account(cast.buyer_a), platform(Account.Kind.ADJUSTMENTS))

    response = adjust(cast.finance, body, key="has spaces & symbols!")

    assert response.status_code == 201
    assert response.json()["transfer_id"].startswith(f"adjh:{cast.operator.pk}:")


def _legs(body: dict, index: int, **change) -> dict:
    body["legs"][index].update(change)
    return body


def _both_amounts(body: dict, amount: Any) -> dict:
    for leg in body["legs"]:
        leg["amount"] = amount
    return body


def _mutations(a: Account, b: Account, eur: Account) -> list[tuple[str, Any, str]]:
    """(name, body, the field the 400 must name)."""

    def base(**extra) -> dict:
        return adjustment_body(a, b, **extra)

    def without(key: str) -> dict:
        body = base()
        del body[key]
        return body

    return [
        ("unknown currency", base(currency="XYZ"), "currency"),
        ("currency not a string", base(currency=5), "currency"),
        ("missing currency", without("currency"), "currency"),
        ("NUL in reason", base(reason="refund\x00"), "reason"),
        ("blank reason", base(reason="   "), "reason"),
        ("reason too long", base(reason="x" * 501), "reason"),
        ("reason a list", base(reason=["x"]), "reason"),
        ("missing reason", without("reason"), "reason"),
        ("legs a string", base(legs="two"), "legs"),
        ("missing legs", without("legs"), "legs"),
        ("no legs", base(legs=[]), "legs"),
        ("a single leg", base(legs=[{"account": a.pk, "side": "debit", "amount": "1"}]), "legs"),
        ("65 legs", base(legs=[{"account": a.pk, "side": "debit", "amount": "1"}] * 65), "legs"),
        ("a leg not an object", base(legs=["x", base()["legs"][1]]), "legs[0].non_field_errors"),
        ("exponent amount", _both_amounts(base(), "1e30"), "legs[0].amount"),
        ("huge number amount", _both_amounts(base(), 10**40), "legs[0].amount"),
        ("huge decimal amount", _both_amounts(base(), "1" + "0" * 30), "legs[0].amount"),
        ("just past the bound", _both_amounts(base(), "1000000000.000001"), "legs[0].amount"),
        ("float amount", _both_amounts(base(), 12.34), "legs[0].amount"),
        ("negative amount", _both_amounts(base(), "-5.00"), "legs[0].amount"),
        ("zero amount", _both_amounts(base(), "0.00"), "legs[0].amount"),
        ("seven decimals", _both_amounts(base(), "1.0000001"), "legs[0].amount"),
        ("NaN amount", _both_amounts(base(), "NaN"), "legs[0].amount"),
        ("NUL in amount", _both_amounts(base(), "5\x00"), "legs[0].amount"),
        ("null amount", _both_amounts(base(), None), "legs[0].amount"),
        ("unknown side", _legs(base(), 1, side="up"), "legs[1].side"),
        ("side D", _legs(base(), 0, side="D"), "legs[0].side"),
        ("huge account id", _legs(base(), 0, account=10**40), "legs[0].account"),
        ("account not a number", _legs(base(), 0, account="abc"), "legs[0].account"),
        ("account a boolean", _legs(base(), 0, account=True), "legs[0].account"),
        ("unknown account", _legs(base(), 1, account=987654321), "legs[1].account"),
        ("same account twice", _legs(base(), 1, account=a.pk), "legs[1].account"),
        ("account in another currency", _legs(base(), 1, account=eur.pk), "legs[1].account"),
        ("unbalanced legs", _legs(base(), 1, amount="4.99"), "legs"),
        ("body a list", [base()], "non_field_errors"),
    ]


def test_every_malformed_adjustment_is_a_400_naming_the_field(funded):
    cast = funded
    a, b = credit_account(cast.buyer_a), platform(Account.Kind.ADJUSTMENTS)
    eur = credit_account(cast.buyer_a, "EUR")
    before = books()

    for index, (name, body, field) in enumerate(_mutations(a, b, eur)):
        response = adjust(cast.finance, body, key=f"bad-{index}")
        assert response.status_code == 400, (name, response.content)
        error = response.json()["error"]
        assert error["code"] == "invalid", name
        assert field in error_fields(response), (name, error)
        assert field in error["message"], (name, error["message"])

    assert books() == before
    assert not IdempotentRequest.objects.exists()  # failed runs give their keys back


def test_an_adjustment_without_an_idempotency_key_is_refused(funded):
    cast = funded
    before = books()

    response = adjust(
        cast.finance,
        adjustment_body(credit_account(cast.buyer_a), platform(Account.Kind.ADJUSTMENTS)),
        key=None,
    )

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"header": "Idempotency-Key"}
    assert books() == before


def test_malformed_json_is_a_400(cast):
    response = cast.finance.post(
        "/api/v1/journal/adjustments",
        data='{"currency": "USD", "legs": [',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k",
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


# --- credit limits ----------------------------------------------------------


def test_finance_sets_a_credit_limit_that_the_ledger_then_honours(funded):
    cast = funded
    mine, adjustments = credit_account(cast.buyer_a), platform(Account.Kind.ADJUSTMENTS)

    response = cast.finance.post(
        f"/api/v1/accounts/{mine.pk}/credit-limit",
        {"amount": "100.00", "reason": "postpaid contract"},
        format="json",
    )

    assert response.status_code == 200
    assert response.json()["overdraft_limit"] == "100.00"
    mine.refresh_from_db()
    assert mine.overdraft_limit_micros == 100 * USD
    # 20.00 available + 100.00 of credit
    assert (
        adjust(cast.finance, adjustment_body(mine, adjustments, "120.01"), key="over").status_code
        == 402
    )
    assert (
        adjust(cast.finance, adjustment_body(mine, adjustments, "120.00"), key="within").status_code
        == 201
    )
    after = cast.client(cast.buyer_a).get(f"/api/v1/accounts/{mine.pk}/").json()
    assert after["available"] == "-100.00"


def test_a_null_credit_limit_means_no_limit(funded):
    cast = funded
    mine = credit_account(cast.buyer_a)

    response = cast.finance.post(
        f"/api/v1/accounts/{mine.pk}/credit-limit",
        {"amount": None, "reason": "enterprise"},
        format="json",
    )

    assert response.status_code == 200
    assert response.json()["overdraft_limit"] is None
    mine.refresh_from_db()
    assert mine.overdraft_limit_micros is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "-1.00", "reason": "x"}, "amount"),
        ({"amount": "1e3", "reason": "x"}, "amount"),
        ({"amount": 5, "reason": "x"}, "amount"),
        ({"amount": "2000000000", "reason": "x"}, "amount"),
        ({"reason": "x"}, "amount"),
        ({"amount": "5.00"}, "reason"),
        ({"amount": "5.00", "reason": "a\x00b"}, "reason"),
    ],
)
def test_a_malformed_credit_limit_is_a_400_naming_the_field(funded, body, field):
    cast = funded
    mine = credit_account(cast.buyer_a)
    before = books()

    response = cast.finance.post(f"/api/v1/accounts/{mine.pk}/credit-limit", body, format="json")

    assert response.status_code == 400
    assert field in error_fields(response)
    assert books() == before


@pytest.mark.parametrize("kind", [Account.Kind.PROMO, Account.Kind.PAYABLE])
def test_credit_limits_apply_to_buyer_credit_accounts_only(funded, kind):
    cast = funded
    account = (
        platform(kind)
        if kind == Account.Kind.PROMO
        else services.account_open(organization=cast.provider_a, kind=kind, currency="USD")
    )
    before = books()

    response = cast.finance.post(
        f"/api/v1/accounts/{account.pk}/credit-limit",
        {"amount": "5.00", "reason": "x"},
        format="json",
    )

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"account": account.pk}
    assert books() == before


def test_a_credit_limit_on_an_unknown_account_is_404(cast):
    response = cast.finance.post(
        "/api/v1/accounts/987654/credit-limit", {"amount": "5.00", "reason": "x"}, format="json"
    )

    assert response.status_code == 404


# --- the journal ------------------------------------------------------------

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _entries_at(org, times: list[datetime], prefix: str = "t") -> Account:
    """One 1.00 grant to ``org`` at each time (the ledger stamps entries with ``now``)."""
    promo, account = platform(Account.Kind.PROMO), credit_account(org)
    for index, moment in enumerate(times):
        [result] = ledger_execute(
            [
                EntryRequest(
                    transfer_id=f"{prefix}{index}",
                    currency="USD",
                    kind="grant",
                    description=f"grant {index}",
                    legs=((promo.pk, "D", USD), (account.pk, "C", USD)),
                )
            ],
            now=moment,
        )
        assert result.ok, result
    return account


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_the_journal_period_is_half_open(cast):
    times = [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    account = _entries_at(cast.buyer_a, times)
    client = cast.client(cast.buyer_a, role="member")

    def ids(**params) -> list[str]:
        query = "&".join(f"{k}={_iso(v)}" for k, v in params.items())
        response = client.get(f"/api/v1/journal/?account={account.pk}&{query}")
        assert response.status_code == 200, response.json()
        return [line["transfer_id"] for line in response.json()["results"]]

    assert ids(since=times[0], until=times[2]) == ["t1", "t0"]
    assert ids(since=times[1]) == ["t2", "t1"]
    assert ids(until=times[1]) == ["t0"]
    assert ids(since=times[1], until=times[1] + timedelta(microseconds=1)) == ["t1"]
    assert ids(since=times[2] + timedelta(microseconds=1)) == []


def test_an_offset_in_the_period_is_honoured(cast):
    account = _entries_at(cast.buyer_a, [T0, T0 + timedelta(hours=2)])

    # 02:00+01:00 is 01:00 UTC: only the first entry is before it
    response = cast.client(cast.buyer_a).get(
        "/api/v1/journal/", {"account": account.pk, "until": "2025-03-01T02:00:00+01:00"}
    )

    assert [line["transfer_id"] for line in response.json()["results"]] == ["t0"]


def test_journal_lines_carry_their_entry(cast):
    account = _entries_at(cast.buyer_a, [T0])

    [line] = cast.client(cast.buyer_a).get("/api/v1/journal/").json()["results"]

    entry = Event.objects.get(stream_id="entry:t0")
    assert line == {
        "id": line["id"],
        "position": entry.position,
        "transfer_id": "t0",
        "kind": "grant",
        "description": "grant 0",
        "account": account.pk,
        "side": "credit",
        "amount_micros": USD,
        "amount": "1.00",
        "currency": "USD",
        "recorded_at": "2025-03-01T00:00:00Z",
    }


def test_lines_posted_by_a_hold_name_the_hold(funded):
    cast = funded
    services.hold_post(hold_id="lease-a", amount_micros=2 * USD)

    lines = cast.client(cast.buyer_a).get("/api/v1/journal/").json()["results"]

    assert [(x["transfer_id"], x["kind"], x["side"], x["amount"]) for x in lines] == [
        ("lease-a", "hold", "debit", "2.00"),
        ("seed-a", "grant", "credit", "25.00"),
    ]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("since=yesterday", "since"),
        ("since=2025-13-01T00:00:00Z", "since"),
        ("until=2025-03-01", "until"),
        ("since=2025-03-01T00:00:00", "since"),  # naive
        ("since=2025-03-02T00:00:00Z&until=2025-03-01T00:00:00Z", "until"),
        ("since=2025-03-01T00:00:00Z&until=2025-03-01T00:00:00Z", "until"),
        ("account=abc", "account"),
        ("account=-1", "account"),
        ("account=99999999999999999999999", "account"),
        ("limit=0", "limit"),
        ("cursor=bogus", "cursor"),
    ],
)
def test_bad_journal_parameters_are_a_400_naming_them(cast, query, parameter):
    response = cast.client(cast.buyer_a).get(f"/api/v1/journal/?{query}")

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"parameter": parameter}
    assert parameter in response.json()["error"]["message"]


def test_the_journal_pages_newest_first_without_gaps_or_repeats(cast):
    times = [T0 + timedelta(minutes=i) for i in range(5)]
    account = _entries_at(cast.buyer_a, times)
    client = cast.client(cast.buyer_a)

    seen: list[str] = []
    url: str | None = f"/api/v1/journal/?account={account.pk}&limit=2"
    pages = 0
    while url:
        page = client.get(url).json()
        assert len(page["results"]) <= 2
        seen += [line["transfer_id"] for line in page["results"]]
        url = page["next"]
        pages += 1

    assert seen == ["t4", "t3", "t2", "t1", "t0"]
    assert pages == 3


def test_the_journal_makes_the_same_queries_for_one_line_or_many(cast):
    client = cast.client(cast.buyer_a)
    _entries_at(cast.buyer_a, [T0])
    client.get("/api/v1/journal/")
    with CaptureQueriesContext(connection) as few:
        client.get("/api/v1/journal/")
    _entries_at(cast.buyer_b, [T0], prefix="b")  # unrelated
    promo, account = platform(Account.Kind.PROMO), credit_account(cast.buyer_a)
    ledger_execute(
        [
            EntryRequest(
                transfer_id=f"more-{i}",
                currency="USD",
                kind="grant",
                legs=((promo.pk, "D", USD), (account.pk, "C", USD)),
            )
            for i in range(10)
        ]
    )
    with CaptureQueriesContext(connection) as many:
        lines = client.get("/api/v1/journal/").json()["results"]

    assert len(lines) == 11
    assert len(many) == len(few)


def test_the_schema_documents_the_ledger_endpoints_without_warnings():
    out = StringIO()

    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)

    paths = yaml.safe_load(out.getvalue())["paths"]
    assert set(paths["/api/v1/accounts/"]) == {"get"}
    assert set(paths["/api/v1/accounts/{account_id}/"]) == {"get"}
    assert set(paths["/api/v1/accounts/{account_id}/credit-limit"]) == {"post"}
    assert set(paths["/api/v1/journal/"]) == {"get"}
    assert set(paths["/api/v1/trial-balance/"]) == {"get"}
    adjustments = paths["/api/v1/journal/adjustments"]["post"]
    [key] = [p for p in adjustments["parameters"] if p["name"] == "Idempotency-Key"]
    assert key["required"] is True
    assert {"201", "400", "402", "403", "422"} <= set(adjustments["responses"])
