"""Every write of the marketplace: orders, matching rounds, the lease lifecycle,
preemption and failover. Keyword-only, typed, one transaction each (retried whole
on a deadlock or serialization failure).

Money (see also billing/credit.py, behind the ``credit`` port):

- **Placing a raw order reserves** the buyer's credit for its maximum cost: every
  GPU for the whole duration at the limit price, plus the platform fee (an
  open-ended order: its first billing window). Not enough → 402 with the amount
  missing. The reservation is a ledger hold ``order-<id>:r<n>`` that is only ever
  released: when the order is cancelled or expires, or when it is filled.
- **A lease converts the reservation**: in the transaction that creates the lease,
  the order's reservation is released and the lease's own hold
  ``lease-<id>:w1`` is placed for the lease's maximum cost at the lease price (the
  offer's, at or below the limit, so it always fits in what was released).
- **Ending a lease settles its hold**: GPU-seconds delivered (from the window's start
  to the end, or to the last good heartbeat of a failed node, or to a forced
  withdrawal or a preemption) x price / 3600, rounded half-even once, plus the fee,
  posted in one journal entry to the provider's payable and the platform's fees;
  the rest is released. Open-ended leases are billed a window at a time
  (``MARKETPLACE_BILLING_WINDOW_SECONDS``): each window is settled when it ends and
  the next one held; when credit cannot cover the next window, the lease ends.
- **Managed work** (orders whose workload is a fine-tune or an inference deployment)
  is paid for by the buyer per token, not here: such orders reserve nothing, and
  their leases' holds are on the platform's cost of revenue, settled to the
  provider at the lease price with no fee.

Concurrency: a matching round holds a PostgreSQL advisory lock (two matchers take
turns), applies each allocation in its own short transaction that re-locks the order
and the offers and re-checks them, and the unique index over live lease GPUs refuses
any double allocation regardless. Order rows are locked before lease rows in every
flow, so flows do not deadlock one another.

This module is the surface other apps (and the marketplace's own tasks, follower and
APIs) import; the code lives in a module per role: ``orders`` (placing, cancelling,
expiring), ``order_book`` (an order's lock, reservation and expiry), ``matching_rounds``
(a round and its allocations), ``preemption``, ``lease_lifecycle`` (activation, billing
windows, the tick), ``lease_closing`` (ending and settling a lease), ``failover``, and
``common`` (settings, credit, events, asking for a round).
"""

from __future__ import annotations

from marketplace.common import (
    HOLD_MARGIN,
    MATCH_ORDERS_TASK,
    billing_window,
    credit,
    matching_request,
    order_max_wait,
)
from marketplace.failover import node_failover, offer_forced_end
from marketplace.lease_closing import lease_end
from marketplace.lease_lifecycle import leases_tick
from marketplace.matching_rounds import MATCHING_LOCK, RoundResult, matching_round
from marketplace.orders import (
    MAX_DURATION_SECONDS,
    MAX_GPUS_PER_NODE,
    MAX_NODES,
    MAX_PRICE_MICROS,
    Aware,
    CountryCode,
    GpuModelSlug,
    OrderSpec,
    OrderWorkload,
    order_cancel,
    order_place,
    orders_expire,
)

__all__ = [
    "HOLD_MARGIN",
    "MATCHING_LOCK",
    "MATCH_ORDERS_TASK",
    "MAX_DURATION_SECONDS",
    "MAX_GPUS_PER_NODE",
    "MAX_NODES",
    "MAX_PRICE_MICROS",
    "Aware",
    "CountryCode",
    "GpuModelSlug",
    "OrderSpec",
    "OrderWorkload",
    "RoundResult",
    "billing_window",
    "credit",
    "lease_end",
    "leases_tick",
    "matching_request",
    "matching_round",
    "node_failover",
    "offer_forced_end",
    "order_cancel",
    "order_max_wait",
    "order_place",
    "orders_expire",
]
