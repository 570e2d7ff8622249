"""A buyer's billing terms: prepaid or postpaid, and what happens when prepaid credit
runs out (pause or stop)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.errors import InvalidInput
from core.eventstore import NewEvent, event_append
from core.models import Event, Organization

# --- billing terms ----------------------------------------------------------

TERMS_STREAM = "billing.terms"
TERMS_SET = "BillingTermsSet"
ON_EXHAUSTED = ("pause", "stop")


@dataclass(frozen=True, slots=True)
class BillingTerms:
    postpaid: bool = False  # usage debits the receivable instead of prepaid credit
    on_credit_exhausted: str = "pause"  # what running work does when credit runs out


def _terms_stream(organization_id: int) -> str:
    return f"terms:{organization_id}"


def billing_terms_for(*, organization_ids: Iterable[int]) -> dict[int, BillingTerms]:
    """Each org's newest terms; the default (prepaid, pause) where none were set."""
    ids = list(organization_ids)
    found = {org_id: BillingTerms() for org_id in ids}
    newest: dict[str, int] = {}
    rows = Event.objects.filter(stream_id__in=[_terms_stream(i) for i in ids]).values_list(
        "stream_id", "version", "payload"
    )
    for stream_id, version, payload in rows:
        if version > newest.get(stream_id, 0):
            newest[stream_id] = version
            found[int(stream_id.split(":", 1)[1])] = BillingTerms(
                postpaid=bool(payload["postpaid"]),
                on_credit_exhausted=payload["on_credit_exhausted"],
            )
    return found


def billing_terms_set(
    *, organization: Organization, postpaid: bool, on_credit_exhausted: str, actor: str
) -> BillingTerms:
    """Record an org's billing terms (finance staff, or a contract import)."""
    if on_credit_exhausted not in ON_EXHAUSTED:
        raise InvalidInput(
            f"on_credit_exhausted must be one of {', '.join(ON_EXHAUSTED)}",
            details={"field": "on_credit_exhausted"},
        )
    stream_id = _terms_stream(organization.pk)
    event_append(
        stream_type=TERMS_STREAM,
        stream_id=stream_id,
        expected_version=None,
        events=[
            NewEvent(TERMS_SET, {"postpaid": postpaid, "on_credit_exhausted": on_credit_exhausted})
        ],
        tenant_id=organization.pk,
        metadata={"actor": actor},
    )
    return BillingTerms(postpaid=postpaid, on_credit_exhausted=on_credit_exhausted)
