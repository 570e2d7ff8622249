"""The marketplace follows the supply side's events (core.followers):

- ``NodeHealthChanged`` to unhealthy: fail the node's live leases at its last good
  heartbeat, standing orders back in the book (``services.node_failover``);
- ``OfferWithdrawn`` with ``forced``: end the offer's leases at ``forced_end_at``;
- ``OfferListed``, ``OfferResumed``, ``OfferRepriced`` and a node turning healthy:
  new supply, so ask for a matching round.

Effects run in the follower's transaction, with its tracking row: exactly once.
``manage.py run_matching`` runs this follower between rounds; ``run_follower``
runs it too.
"""

from __future__ import annotations

from datetime import datetime

from core.eventstore import RecordedEvent
from core.followers import Follower, register
from marketplace import services
from providers.events import (
    NodeHealthChanged,
    OfferListed,
    OfferRepriced,
    OfferResumed,
    OfferWithdrawn,
)

_NEW_SUPPLY = {OfferListed.type, OfferResumed.type, OfferRepriced.type}


def _at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class SupplyFollower(Follower):
    name = "marketplace.supply"
    stream_types = ("node", "offer")

    def handle(self, event: RecordedEvent) -> None:
        payload = event.payload
        if event.type == NodeHealthChanged.type:
            if payload["health"] == "unhealthy":
                services.node_failover(
                    node_id=payload["node_id"],
                    last_good=_at(payload.get("last_heartbeat_at")),
                    now=_at(payload["at"]),
                )
            elif payload["health"] == "healthy":
                services.matching_request()
        elif event.type == OfferWithdrawn.type and payload.get("forced"):
            at = _at(payload.get("forced_end_at")) or _at(payload["at"])
            assert at is not None
            services.offer_forced_end(offer_id=payload["offer_id"], at=at)
        elif event.type in _NEW_SUPPLY:
            services.matching_request()


supply_follower = register(SupplyFollower())
