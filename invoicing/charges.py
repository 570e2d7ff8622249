"""Ledger charges that are not usage (fees, minimums, adjustments, lease time) and
the lines they make, read for one buyer or a whole chunk of buyers at once."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from core.db import is_postgres
from core.models import Event, Organization
from core.money import rate_amount
from invoicing.lines import _Line
from invoicing.models import UsageAccrual
from invoicing.queries import _any, _chunks, _select
from ledger import events as ev
from ledger.models import Account, Posting
from pricing.selectors import SECONDS_PER_HOUR

CHARGE_KINDS = {Account.Kind.REVENUE, Account.Kind.FEES, Account.Kind.PAYABLE}
BUYER_KINDS = (Account.Kind.CREDIT, Account.Kind.RECEIVABLE)


@dataclass(frozen=True, slots=True)
class _Charge:
    position: int
    transfer_id: str
    kind: str
    description: str
    amount_micros: int  # debited to the buyer
    from_credit_micros: int
    hold_id: str


def buyer_accounts(organization_id: int, currency: str) -> dict[int, str]:
    return dict(
        Account.objects.filter(
            organization_id=organization_id, currency=currency, kind__in=BUYER_KINDS
        ).values_list("pk", "kind")
    )


def _ledger_charges(
    organization: Organization, currency: str, start: datetime, end: datetime, as_of: int
) -> list[_Charge]:
    """Journal entries in ``[start, end)`` that charged the buyer for something sold
    (a credit leg to revenue, fees or a payable), other than rated usage."""
    mine = buyer_accounts(organization.pk, currency)
    return _ledger_charges_many({organization.pk: mine}, start, end, as_of).get(organization.pk, [])


def _ledger_charges_many(
    mine_by_org: dict[int, dict[int, str]],
    start: datetime,
    end: datetime,
    as_of: int,
    rated: Iterable[int] = (),
) -> dict[int, list[_Charge]]:
    """``_ledger_charges`` of many orgs in four queries: org -> its charges.
    ``rated``: positions of entries known to be rated usage (``usage:…``), which
    charge nothing here: not read again (a month's close knows most of them from
    its accruals, some twenty thousand entries it would otherwise read only to
    leave out)."""
    owner = {account: org for org, mine in mine_by_org.items() for account in mine}
    if not owner:
        return {}
    positions_of: dict[int, set[int]] = defaultdict(set)
    in_accounts, accounts_params = _any(sorted(owner))
    for account, position in _select(
        f"SELECT DISTINCT account_id, entry_position FROM {Posting._meta.db_table} "
        f"WHERE account_id {in_accounts} AND side = 'D' AND recorded_at >= %s "
        "AND recorded_at < %s AND entry_position <= %s",
        [*accounts_params, start, end, as_of],
    ):
        positions_of[owner[account]].add(position)
    if not positions_of:
        return {}
    events = {
        position: (event_type, payload)
        for position, event_type, payload in _events_not_usage(
            sorted(set().union(*positions_of.values()).difference(rated))
        )
    }
    legs_accounts = {leg[0] for _, payload in events.values() for leg in payload.get("legs", ())}
    kinds: dict[int, str] = {}
    for accounts in _chunks(sorted(legs_accounts)):
        kinds.update(Account.objects.filter(pk__in=accounts).values_list("pk", "kind"))
    found: dict[int, list[_Charge]] = {}
    for org, positions in positions_of.items():
        mine = mine_by_org[org]
        charges = []
        for position in sorted(positions):
            if position not in events:
                continue  # rated usage: the accrual lines carry it
            event_type, payload = events[position]
            charge = _charge_of(position, event_type, payload, mine, kinds)
            if charge is not None:
                charges.append(charge)
        found[org] = charges
    return found


def _events_not_usage(positions: list[int]) -> list[tuple[int, str, dict]]:
    """(position, type, payload) of these events, but rating's entries (``usage:…``),
    which the accruals carry: on PostgreSQL they are left out by the query."""
    found: list[tuple[int, str, dict]] = []
    if not positions:
        return found
    if is_postgres():
        wanted, wanted_params = _any(positions)
        for position, event_type, payload in _select(
            f"SELECT position, type, payload FROM {Event._meta.db_table} "
            f"WHERE position {wanted} "
            "AND coalesce(payload ->> 'transfer_id', '') NOT LIKE 'usage:%%' "
            "ORDER BY position",
            wanted_params,
        ):
            found.append(
                (position, event_type, json.loads(payload) if isinstance(payload, str) else payload)
            )
        return found
    for chunk in _chunks(positions):
        for position, event_type, payload in Event.objects.filter(position__in=chunk).values_list(
            "position", "type", "payload"
        ):
            if not str(payload.get("transfer_id") or "").startswith("usage:"):
                found.append((position, event_type, payload))
    return sorted(found, key=lambda row: row[0])


def _charge_of(
    position: int, event_type: str, payload: dict, mine: dict[int, str], kinds: dict[int, str]
) -> _Charge | None:
    """What one journal entry charged the buyer (its accounts ``mine``) for something
    sold; None when it charged nothing (or is rated usage)."""
    transfer_id = payload.get("transfer_id") or f"hold:{payload.get('hold_id', '')}"
    if transfer_id.startswith("usage:"):
        return None  # rated usage: the accrual lines carry it
    legs = payload.get("legs", ())
    if not any(
        side == "C" and a not in mine and kinds.get(a) in CHARGE_KINDS for a, side, _ in legs
    ):
        return None
    amount = sum(x for a, side, x in legs if side == "D" and a in mine)
    from_credit = sum(
        x for a, side, x in legs if side == "D" and mine.get(a) == Account.Kind.CREDIT
    )
    # A charge reversed within the same entry (credit back to the buyer) nets out.
    amount -= sum(x for a, side, x in legs if side == "C" and a in mine)
    if amount <= 0:
        return None
    hold_id = payload.get("hold_id", "") if event_type == ev.HOLD_POSTED else ""
    return _Charge(
        position,
        transfer_id,
        payload.get("kind", "hold") if event_type == ev.ENTRY_POSTED else "lease",
        payload.get("description", ""),
        amount,
        min(from_credit, amount),
        hold_id,
    )


def _lease_gpu_models(organization_id: int, subjects: set[str]) -> dict[str, tuple[str, int]]:
    """lease subject -> (GPU model, GPU-seconds metered) from the usage rating left out."""
    return _lease_gpu_models_many({organization_id: subjects}).get(organization_id, {})


def _lease_gpu_models_many(
    subjects_by_org: dict[int, set[str]],
) -> dict[int, dict[str, tuple[str, int]]]:
    found: dict[int, dict[str, tuple[str, int]]] = {}
    wanted = {(org, s) for org, subjects in subjects_by_org.items() for s in subjects}
    if not wanted:
        return found
    rows = (
        UsageAccrual.objects.filter(
            buyer_id__in=sorted({org for org, _ in wanted}),
            product="gpu_lease",
            transfer_id="",
            subject__in=sorted({s for _, s in wanted}),
        )
        .values_list("buyer_id", "subject", "gpu_model", "quantity")
        .order_by("buyer_id", "subject", "id")
    )
    for org, subject, gpu_model, quantity in rows:
        if (org, subject) not in wanted:
            continue
        mine = found.setdefault(org, {})
        model, seconds = mine.get(subject, (gpu_model, 0))
        mine[subject] = (model, seconds + quantity)
    return found


def _charge_lines(
    organization_id: int,
    charges: list[_Charge],
    currency: str,
    gpu: dict[str, tuple[str, int]] | None = None,
) -> dict[tuple, _Line]:
    lines: dict[tuple, _Line] = {}
    if gpu is None:
        lease_subjects = {c.hold_id.rsplit(":w", 1)[0] for c in charges if c.hold_id}
        gpu = _lease_gpu_models(organization_id, lease_subjects)
    seconds_counted: set[str] = set()
    for charge in charges:
        subject = charge.hold_id.rsplit(":w", 1)[0] if charge.hold_id else ""
        if subject and subject in gpu:
            gpu_model, seconds = gpu[subject]
            key: tuple = ("gpu_lease", gpu_model, "settled")
            line = lines.get(key) or _Line(
                "gpu_lease",
                f"GPU lease · {gpu_model or 'GPU'} (settled lease time, platform fee included)",
                "gpu_seconds",
                SECONDS_PER_HOUR,
                0,
                gpu_model=gpu_model,
            )
            if subject not in seconds_counted:
                line.quantity += seconds
                seconds_counted.add(subject)
        elif charge.transfer_id.startswith("ftmin:"):
            job = charge.transfer_id.split(":", 2)[2]
            key = ("fine_tune", job, "minimum")
            line = lines.get(key) or _Line(
                "fine_tune", f"Fine-tune {job} · minimum charge per job", "item", 1, 0, job=job
            )
            line.quantity = 1
        elif charge.hold_id:
            key = ("gpu_lease", "", "settled")
            line = lines.get(key) or _Line(
                "gpu_lease",
                "GPU lease (settled lease time, platform fee included)",
                "item",
                1,
                0,
            )
            line.quantity += 1
        else:
            description = (charge.description or charge.kind or "charge")[:250]
            key = ("other", description)
            line = lines.get(key) or _Line("other", description, "item", 1, 0)
            line.quantity += 1
        lines[key] = line
        line.exact_micros += charge.amount_micros
        line.entries[charge.transfer_id] = (
            line.entries.get(charge.transfer_id, 0) + charge.amount_micros
        )
    for line in lines.values():
        if line.unit == "gpu_seconds" and line.quantity:
            line.unit_price_micros = rate_amount(line.exact_micros, SECONDS_PER_HOUR, line.quantity)
        elif line.unit == "item" and line.quantity:
            line.unit_price_micros = rate_amount(line.exact_micros, 1, line.quantity)
    return lines


def _entry_facts(transfer_ids: Iterable[str]) -> dict[str, tuple[int, list[tuple[int, str, int]]]]:
    """transfer id -> (entry position, its debit legs: (account, "D", amount))."""
    wanted = sorted(set(transfer_ids))
    stream_ids = [
        ev.hold_stream_id(t[5:]) if t.startswith("hold:") else ev.entry_stream_id(t) for t in wanted
    ]
    facts: dict[str, tuple[int, list[tuple[int, str, int]]]] = {}
    if is_postgres():
        # The legs taken apart by the server: no payload crosses to be parsed here
        # (a close reads tens of thousands of entries).
        streams, streams_params = _any(stream_ids)
        for position, stream_id, account, amount in _select(
            f"""SELECT e.position, e.stream_id, (l ->> 0)::bigint, (l ->> 2)::bigint
                  FROM {Event._meta.db_table} e
                  LEFT JOIN LATERAL jsonb_array_elements(e.payload -> 'legs') l ON l ->> 1 = 'D'
                 WHERE e.stream_id {streams} AND e.type IN (%s, %s)""",
            [*streams_params, ev.ENTRY_POSTED, ev.HOLD_POSTED],
        ):
            # entry:<transfer id> or hold:<hold id>, whose transfer id is hold:<hold id>
            transfer_id = stream_id if stream_id.startswith("hold:") else stream_id[6:]
            found = facts.get(transfer_id)
            if found is None:
                found = facts[transfer_id] = (position, [])
            if account is not None:
                found[1].append((account, "D", amount))
        return facts
    for chunk in _chunks(stream_ids):
        rows = Event.objects.filter(
            stream_id__in=chunk, type__in=(ev.ENTRY_POSTED, ev.HOLD_POSTED)
        ).values_list("position", "payload")
        for position, payload in rows:
            transfer_id = payload.get("transfer_id") or f"hold:{payload['hold_id']}"
            facts[transfer_id] = (position, [tuple(leg) for leg in payload["legs"]])
    return facts
