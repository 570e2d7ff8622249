"""Auto-recharge: a follower of the ledger's events.

It reads every journal entry and hold change (streams ``ledger.entry`` and
``ledger.hold``) and, for each that touches the prepaid credit account of a buyer
with auto-recharge on, checks that buyer's available credit against its threshold
(``services.auto_recharge_check``) as that event left it: the follower keeps the
account's four counters itself, moved by each event with the ledger's own
``apply_event``, so a crossing is seen even when later events have already moved
the live balance back. The check and the follower's position commit
together, so each ledger event is looked at once; the ``armed`` flag makes it fire
once per crossing, however many events the crossing spans. The charge is sent to
Stripe by an actor after the commit, never inside it.

One indexed query per ledger event finds whether it touches such an account.
"""

from __future__ import annotations

from core.eventstore import RecordedEvent
from core.followers import Follower, register
from ledger import events as ledger_events
from ledger.models import Account
from ledger.selectors import accounts_in
from payments import services


class AutoRechargeFollower(Follower):
    name = "payments.auto_recharge"
    stream_types = (ledger_events.ENTRY_STREAM, ledger_events.HOLD_STREAM)
    batch_size = 200

    def handle(self, event: RecordedEvent) -> None:
        touched = accounts_in(event)
        if not touched:
            return
        watched = (
            Account.objects.filter(
                pk__in=touched,
                kind=Account.Kind.CREDIT,
                organization__auto_recharge__enabled=True,
            )
            .values_list("organization_id", "pk")
            .order_by("organization_id")
        )
        for organization_id, account_id in watched:
            services.auto_recharge_check(
                organization_id=organization_id,
                account_id=account_id,
                event_type=event.type,
                payload=event.payload,
                position=event.position,
                now=event.recorded_at,
            )


auto_recharge_follower = register(AutoRechargeFollower())
