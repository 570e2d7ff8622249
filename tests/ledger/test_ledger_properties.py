"""A hypothesis state machine over the ledger: open accounts, transfer, hold,
post, void, expire and replay in any order; after every step the books obey
the invariants and agree with a simple model."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from core.models import Organization
from ledger import services
from ledger.engine import EntryRequest, HoldPostRequest, HoldRequest, HoldVoidRequest
from ledger.models import Account, Balance
from ledger.projection import replay

_ids = itertools.count()


class LedgerMachine(RuleBasedStateMachine):
    accounts = Bundle("accounts")
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.run = next(_ids)
        self.model: dict[int, int] = {}  # account -> available (normal side C)
        self.limits: dict[int, int] = {}
        self.pending: dict[str, tuple[int, int, int]] = {}  # hold -> (debit, credit, amount)
        self.now = timezone.now()

    def _id(self, prefix: str) -> str:
        return f"m{self.run}-{prefix}-{next(_ids)}"

    @initialize(target=accounts, grant=st.integers(0, 10_000))
    def first_account(self, grant):
        return self._open(grant, 0)

    @rule(target=accounts, grant=st.integers(0, 10_000), limit=st.sampled_from([0, 0, 500]))
    def open_account(self, grant, limit):
        return self._open(grant, limit)

    def _open(self, grant: int, limit: int) -> int:
        org = Organization.objects.create(name=self._id("org"), kind="buyer")
        account = services.account_open(organization=org, kind=Account.Kind.CREDIT, currency="USD")
        if limit:
            services.account_set_overdraft_limit(account=account, limit_micros=limit)
        if grant:
            services.credits_grant(
                organization=org,
                amount_micros=grant,
                currency="USD",
                reason="seed",
                transfer_id=self._id("grant"),
            )
        self.model[account.pk] = grant
        self.limits[account.pk] = limit
        return account.pk

    def _fits(self, account: int, amount: int) -> bool:
        return self.model[account] - amount >= -self.limits[account]

    @rule(debit=accounts, credit=accounts, amount=st.integers(1, 5_000))
    def transfer(self, debit, credit, amount):
        [result] = services.ledger_execute(
            [EntryRequest(self._id("t"), "USD", ((debit, "D", amount), (credit, "C", amount)))]
        )
        if debit == credit:
            assert result.code == "invalid"
        elif self._fits(debit, amount):
            assert result.status == "posted", result
            self.model[debit] -= amount
            self.model[credit] += amount
        else:
            assert result.code == "exceeds_limit"

    @rule(target=holds, debit=accounts, credit=accounts, amount=st.integers(1, 5_000))
    def hold(self, debit, credit, amount):
        hold_id = self._id("h")
        [result] = services.ledger_execute(
            [HoldRequest(hold_id, debit, credit, amount, "USD", self.now + timedelta(hours=1))],
            now=self.now,
        )
        if debit != credit and self._fits(debit, amount):
            assert result.status == "posted", result
            self.model[debit] -= amount
            self.pending[hold_id] = (debit, credit, amount)
        else:
            assert not result.ok
        return hold_id

    @rule(hold_id=consumes(holds), part=st.floats(0.01, 1.0))
    def post(self, hold_id, part):
        held = self.pending.pop(hold_id, None)
        amount = max(1, int((held[2] if held else 1) * part))
        [result] = services.ledger_execute([HoldPostRequest(hold_id, amount)], now=self.now)
        if held is None:
            assert not result.ok
            return
        debit, credit, total = held
        assert result.status == "posted", result
        self.model[debit] += total - amount
        self.model[credit] += amount

    @rule(hold_id=consumes(holds))
    def void(self, hold_id):
        held = self.pending.pop(hold_id, None)
        [result] = services.ledger_execute([HoldVoidRequest(hold_id)], now=self.now)
        if held is None:
            assert not result.ok
            return
        assert result.status == "posted"
        self.model[held[0]] += held[2]

    @rule()
    def time_passes_and_holds_expire(self):
        self.now += timedelta(hours=2)
        services.holds_expire(now=self.now)
        for debit, _, amount in self.pending.values():
            self.model[debit] += amount
        self.pending.clear()

    @invariant()
    def balances_match_the_model_and_limits(self):
        rows = Balance.objects.filter(account_id__in=list(self.model))
        for b in rows:
            available = b.credits_posted - b.debits_posted - b.debits_pending
            assert available == self.model[b.account_id]
            assert available >= -self.limits[b.account_id]

    @invariant()
    def postings_sum_to_zero(self):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(sum(CASE side WHEN 'D' THEN amount_micros "
                "ELSE -amount_micros END), 0) FROM billing_posting"
            )
            assert cursor.fetchone()[0] == 0

    @invariant()
    def replay_equals_projection(self):
        replayed = replay()
        for b in Balance.objects.filter(account_id__in=list(self.model)):
            state = replayed.get(b.account_id)
            counters = state.counters() if state else (0, 0, 0, 0, 0)
            assert counters == (
                b.debits_posted,
                b.credits_posted,
                b.debits_pending,
                b.credits_pending,
                b.position,
            )


@pytest.mark.django_db
def test_ledger_state_machine():
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
