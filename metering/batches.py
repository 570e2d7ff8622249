"""What the steps of a usage batch share: who sends it (``Sender``), each event's
answer (``Outcome``), the keys events are sorted and grouped by, months, and the
usage table's name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from operator import attrgetter

import msgspec

from core.models import Organization
from core.tenancy import Caller
from metering.models import PLATFORM_PRODUCER, UsageEvent
from metering.schema import Rejection, UsageEventIn

MAX_FUTURE = timedelta(minutes=5)
USAGE_TABLE = UsageEvent._meta.db_table
_BUYER_KINDS: tuple[str | None, ...] = (Organization.Kind.BUYER, Organization.Kind.BOTH)
_encode = msgspec.json.encode


# --- who may send -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sender:
    """Who is sending usage, and for whom they may. Whatever the sender, every
    event's subject must exist and be the subject buyer's (``_proven``).

    - the platform's own producers (the runtime and the inference gateway, through
      ``usage_record`` and the ``usage`` port): tokens of jobs and deployments,
      GPU-seconds of leases;
    - a key of the operator organization (the platform's own integrations, run as
      another process): the same;
    - a key of a provider organization (its agents): ``gpu.seconds`` of its own
      leases only (a lease on one of its nodes; with ``node_id``, the agent key's
      node, on that node). Token usage is counted by the platform that ran the work,
      never taken from a provider;
    - a key of a buyer organization: nothing (its usage is what the platform and its
      providers measured, not what it says).
    """

    producer_org_id: int  # PLATFORM_PRODUCER (0) for internal producers
    own_org_id: int | None = None  # buyers: the only subject org allowed
    provider_org_id: int | None = None  # providers: the only provider they may bill for
    trusted: bool = False
    # An agent key bound to one node: only leases on that node (None: any node of
    # ``provider_org_id``).
    node_id: int | None = None

    @classmethod
    def platform(cls) -> Sender:
        return cls(producer_org_id=PLATFORM_PRODUCER, trusted=True)

    @classmethod
    def for_caller(cls, caller: Caller) -> Sender:
        org = caller.organization
        if org.is_operator:
            return cls(producer_org_id=org.pk, trusted=True)
        if org.is_provider:
            # An agent key bound to one node names it (None: a key of the whole org).
            return cls(
                producer_org_id=org.pk,
                provider_org_id=org.pk,
                node_id=getattr(caller, "agent_node_id", None),
            )
        return cls(producer_org_id=org.pk, own_org_id=org.pk)

    def refusal(self, event: UsageEventIn) -> str | None:
        if self.trusted:
            return None
        if self.own_org_id is not None:
            if event.subject.org != self.own_org_id:
                return "a buyer key may only send usage of its own organization"
            if event.type == "gpu.seconds":
                return "gpu.seconds are reported by the provider serving the lease"
            return (
                f"{event.type} of a job or deployment is counted by the platform that ran "
                "it, not sent with a buyer key"
            )
        if event.type != "gpu.seconds":
            return (
                f"{event.type} of a job or deployment is counted by the platform that ran "
                "it; a provider key reports only gpu.seconds of its own leases"
            )
        return None


# --- answers ----------------------------------------------------------------


class Outcome(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event's answer, as the batch endpoint writes it (empty fields left out)."""

    index: int  # the event's place in its batch
    id: str | None
    status: str  # accepted | duplicate | rejected
    code: str = ""
    reason: str = ""
    note: str = ""


def _rejected(index: int, rejection: Rejection) -> Outcome:
    return Outcome(index, rejection.id, "rejected", rejection.code, rejection.reason)


def month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


def next_month(period: date) -> date:
    return date(period.year + period.month // 12, period.month % 12 + 1, 1)


_time = attrgetter("time")
_id = attrgetter("id")
_key = attrgetter("source", "id")
_org = attrgetter("subject.org")
