"""The usage event schema, validated with msgspec (no DRF serializer per event).

One event, CloudEvents-like::

    {"id": "evt-000123",                       # unique per source: the idempotency key
     "source": "runtime/node-7",               # which runtime, agent or lease
     "type": "tokens.training",                # see USAGE_TYPES
     "subject": {"org": 42, "job": "ft-9f2c"}, # the buyer org and ONE of job/deployment/lease
     "time": "2026-11-24T10:00:00Z",           # when it was used; a time zone is required
     "quantity": 125000,                       # an integer count of the type's unit
     "dimensions": {"model": "llama-3.1-8b", "training_type": "lora-sft"}}

A batch is ``{"events": [...]}``. A batch of good events is decoded in one pass;
otherwise the batch is decoded into raw slices, then each slice on its own, so one
bad event is rejected alone and its neighbours go on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import msgspec

from core.errors import ApplicationError, InvalidInput

MAX_EVENTS_PER_BATCH = 1000
MAX_BATCH_BYTES = 1024 * 1024
MAX_EVENT_BYTES = 2048
MAX_QUANTITY = 10**12
MAX_DIMENSIONS = 16
TRAINING_TYPES = ("lora-sft", "lora-dpo", "full-sft", "full-dpo")

# Lengths are checked as the JSON is decoded; the characters allowed (ids: printable
# ASCII without spaces; dimension names: lowercase, digits and _) by ``_check``,
# for a whole batch at once where it can: a regular expression per string in the
# decoder cost three times the rest of decoding a batch.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
TypeName = Annotated[str, msgspec.Meta(max_length=64)]  # one of USAGE_TYPES: see _check
DimKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_ID_CHARS = re.compile(r"[!-~]+")
_DIM_KEY = re.compile(r"[a-z][a-z0-9_]*")
_DIM_KEYS = re.compile(r"[a-z][a-z0-9_]*(?:,[a-z][a-z0-9_]*)*")
DimValue = (
    Annotated[str, msgspec.Meta(max_length=200)]
    | Annotated[int, msgspec.Meta(ge=-(2**53), le=2**53)]
)


class SubjectIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    org: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    job: Id | None = None
    deployment: Id | None = None
    lease: Id | None = None


class UsageEventIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: Id
    source: Id
    type: TypeName
    subject: SubjectIn
    time: Annotated[datetime, msgspec.Meta(tz=True)]
    quantity: Annotated[int, msgspec.Meta(ge=0, le=MAX_QUANTITY)]
    dimensions: Annotated[dict[DimKey, DimValue], msgspec.Meta(max_length=MAX_DIMENSIONS)] = {}


@dataclass(frozen=True, slots=True)
class UsageType:
    """What an event type counts, which subject it belongs to and which dimensions
    rating needs. Adding a type is adding a row here (and a rate in billing.pricing)."""

    unit: str
    subject_kinds: frozenset[str]
    required: tuple[str, ...] = ()


USAGE_TYPES: dict[str, UsageType] = {
    "tokens.training": UsageType("token", frozenset({"job"}), ("model", "training_type")),
    "tokens.evaluation": UsageType("token", frozenset({"job"}), ("model", "training_type")),
    "tokens.prompt": UsageType("token", frozenset({"job", "deployment"}), ("model",)),
    "tokens.completion": UsageType("token", frozenset({"job", "deployment"}), ("model",)),
    # gpu_model, provider and lease_price_micros_per_hour are the lease's own: filled in
    # from the lease at ingestion (metering.provenance._proven), refused if sent otherwise.
    "gpu.seconds": UsageType("gpu_second", frozenset({"lease"})),
}


_REQUIRED = {name: frozenset(usage_type.required) for name, usage_type in USAGE_TYPES.items()}


class BatchTooLarge(ApplicationError):
    status_code = 413
    code = "request_too_large"


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str  # invalid | oversized | future | forbidden | unknown_subject | exceeds_lease
    reason: str
    id: str | None = None


class _Batch(msgspec.Struct, forbid_unknown_fields=True):
    events: list[UsageEventIn]


_batch_decoder = msgspec.json.Decoder(dict[str, list[msgspec.Raw]])
_whole_decoder = msgspec.json.Decoder(_Batch)
_event_decoder = msgspec.json.Decoder(UsageEventIn)
_loose_decoder = msgspec.json.Decoder()
_MESSAGE_PATH = re.compile(r"`\$\.?")


def subject_of(event: UsageEventIn) -> tuple[str, str] | None:
    """The subject's kind and id, or None unless exactly one of them is given."""
    subject = event.subject
    job, deployment, lease = subject.job, subject.deployment, subject.lease
    if job is not None:
        return ("job", job) if deployment is None and lease is None else None
    if deployment is not None:
        return ("deployment", deployment) if lease is None else None
    return ("lease", lease) if lease is not None else None


def _ids(event: UsageEventIn) -> tuple[tuple[str, str | None], ...]:
    subject = event.subject
    return (
        ("id", event.id),
        ("source", event.source),
        ("subject.job", subject.job),
        ("subject.deployment", subject.deployment),
        ("subject.lease", subject.lease),
    )


def _characters(event: UsageEventIn) -> str | None:
    """The characters of one event's ids and dimension names."""
    for name, value in _ids(event):
        if value is not None and not _ID_CHARS.fullmatch(value):
            return f"{name} must be printable ASCII without spaces"
    for key in event.dimensions:
        if not _DIM_KEY.fullmatch(key):
            return (
                f"dimensions: {key!r} is not a dimension name (lowercase letters, digits "
                "and _, starting with a letter)"
            )
    return None


def _characters_all(events: list[UsageEventIn]) -> bool:
    """``_characters`` of a whole batch at once (one match over all ids joined, one
    over all dimension names): True when every event passes. An event naming more
    than one subject id has only the first looked at here; ``_rules`` refuses it,
    and its batch goes through ``_check`` one event at a time."""
    ids = "".join(
        [
            f"{e.id}{e.source}{e.subject.job or e.subject.deployment or e.subject.lease or ''}"
            for e in events
        ]
    )
    keys = ",".join([key for e in events for key in e.dimensions])
    return _ID_CHARS.fullmatch(ids) is not None and (
        not keys or _DIM_KEYS.fullmatch(keys) is not None
    )


def _check(event: UsageEventIn) -> str | None:
    """The rules on an event beyond its JSON shape."""
    return _characters(event) or _rules(event)


def _rules(event: UsageEventIn) -> str | None:
    """The rules a type puts on an event."""
    usage_type = USAGE_TYPES.get(event.type)
    if usage_type is None:
        return f"type {event.type!r} is not one of {', '.join(sorted(USAGE_TYPES))}"
    subject = subject_of(event)
    if subject is None:
        return "subject must name exactly one of job, deployment or lease"
    if subject[0] not in usage_type.subject_kinds:
        return (
            f"a {event.type} event belongs to a "
            f"{' or '.join(sorted(usage_type.subject_kinds))}, not a {subject[0]}"
        )
    dims = event.dimensions
    if not dims.keys() >= _REQUIRED[event.type]:
        missing = next(name for name in usage_type.required if name not in dims)
        return f"dimensions.{missing} is required for {event.type}"
    if "training_type" in usage_type.required and dims["training_type"] not in TRAINING_TYPES:
        return f"dimensions.training_type must be one of {', '.join(TRAINING_TYPES)}"
    if event.type == "gpu.seconds":
        provider = dims.get("provider", 1)
        if not isinstance(provider, int) or provider < 1:
            return "dimensions.provider must be the provider organization's id"
        price = dims.get("lease_price_micros_per_hour", 0)
        if not isinstance(price, int) or not 0 <= price <= MAX_QUANTITY:
            return "dimensions.lease_price_micros_per_hour must be an integer from 0 to 10^12"
    return None


def _loose_id(raw: bytes) -> str | None:
    try:
        value = _loose_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    found = value.get("id") if isinstance(value, dict) else None
    return found if isinstance(found, str) and len(found) <= 200 else None


def event_decode(raw: bytes) -> UsageEventIn | Rejection:
    """One event from its JSON bytes, or why not."""
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection(
            "oversized", f"event is {len(raw)} bytes; at most {MAX_EVENT_BYTES}", _loose_id(raw)
        )
    try:
        event = _event_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return Rejection("invalid", _MESSAGE_PATH.sub("`", str(exc)), _loose_id(raw))
    except msgspec.DecodeError as exc:
        return Rejection("invalid", f"malformed JSON: {exc}")
    problem = _check(event)
    if problem is not None:
        return Rejection("invalid", problem, event.id)
    return event


def event_validate(event: UsageEventIn) -> UsageEventIn | Rejection:
    """The same checks for an event built in Python (internal producers)."""
    try:
        event = msgspec.convert(msgspec.to_builtins(event), UsageEventIn)
    except msgspec.ValidationError as exc:
        return Rejection("invalid", str(exc), event.id)
    problem = _check(event)
    return Rejection("invalid", problem, event.id) if problem else event


def batch_decode(body: bytes) -> list[UsageEventIn | Rejection]:
    """Every event of a ``{"events": [...]}`` body, each decoded or rejected alone.
    A body that is not such an object at all is an ``InvalidInput`` for the request."""
    if len(body) > MAX_BATCH_BYTES:
        raise BatchTooLarge(
            f"a batch is at most {MAX_BATCH_BYTES} bytes; this one is {len(body)}",
            details={"limit_bytes": MAX_BATCH_BYTES},
        )
    try:
        batch = _batch_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidInput(
            f'the body must be {{"events": [...]}}: {exc}', details={"field": "events"}
        ) from None
    raws = batch.get("events")
    if raws is None or set(batch) != {"events"}:
        raise InvalidInput(
            'the body must be {"events": [...]} and nothing else', details={"field": "events"}
        )
    if not 1 <= len(raws) <= MAX_EVENTS_PER_BATCH:
        raise InvalidInput(
            f"a batch holds 1 to {MAX_EVENTS_PER_BATCH} events; this one has {len(raws)}",
            details={"field": "events", "limit": MAX_EVENTS_PER_BATCH},
        )
    if max(map(len, raws)) <= MAX_EVENT_BYTES:
        # Most batches are all good: one typed decode of the whole body, then the
        # type rules. Any invalid event sends the batch down the path that decodes
        # each event on its own, to say which and why.
        try:
            whole = _whole_decoder.decode(body).events
        except msgspec.ValidationError:
            pass
        else:
            if _characters_all(whole) and not any([_rules(event) for event in whole]):
                return list(whole)
    return [event_decode(raw) for raw in raws]
