"""The event schema on its own: what msgspec and the type rules accept."""

from __future__ import annotations

import msgspec
import pytest

from core.errors import InvalidInput
from metering.schema import Rejection, UsageEventIn, batch_decode, event_decode


def raw(**changes) -> bytes:
    event = {
        "id": "e1",
        "source": "s",
        "type": "tokens.prompt",
        "subject": {"org": 1, "deployment": "d"},
        "time": "2026-11-01T00:00:00Z",
        "quantity": 5,
        "dimensions": {"model": "m"},
    }
    event.update(changes)
    return msgspec.json.encode(event)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"quantity": -1}, ">= 0"),
        ({"quantity": 1.5}, "int"),
        ({"id": ""}, "length"),
        ({"extra": 1}, "unknown field"),
        ({"subject": {"org": 1}}, "exactly one of job, deployment or lease"),
        ({"subject": {"org": 1, "job": "j", "lease": "l"}}, "exactly one"),
        (
            {
                "type": "gpu.seconds",
                "subject": {"org": 1, "lease": "l"},
                "dimensions": {
                    "gpu_model": "H100",
                    "provider": "x",
                    "lease_price_micros_per_hour": 1,
                },
            },
            "provider organization's id",
        ),
        (
            {
                "type": "tokens.training",
                "subject": {"org": 1, "job": "j"},
                "dimensions": {"model": "m", "training_type": "rlhf"},
            },
            "training_type must be one of",
        ),
        ({"dimensions": {"Model": "m"}}, "dimensions: 'Model' is not a dimension name"),
        ({"id": "e 1"}, "id must be printable ASCII without spaces"),
        ({"source": "s\u00e9"}, "source must be printable ASCII"),
        ({"subject": {"org": 1, "deployment": "d\n"}}, "subject.deployment must be printable"),
        ({"type": "Tokens.Prompt"}, "is not one of"),
    ],
)
def test_bad_events_are_rejected_with_where_and_what(changes, words):
    outcome = event_decode(raw(**changes))
    assert isinstance(outcome, Rejection)
    assert outcome.code == "invalid"
    assert words in outcome.reason
    assert outcome.id in ("e1", changes.get("id"), "", None)


def test_a_good_event_decodes():
    event = event_decode(raw())
    assert isinstance(event, UsageEventIn)
    assert event.time.utcoffset().total_seconds() == 0


def test_malformed_json_in_one_event_is_that_events_problem():
    body = b'{"events": [' + raw() + b', 12, "x", [1]]}'
    decoded = batch_decode(body)
    assert isinstance(decoded[0], UsageEventIn)
    assert [d.code for d in decoded[1:]] == ["invalid"] * 3


def test_empty_batches_are_refused():
    with pytest.raises(InvalidInput):
        batch_decode(b'{"events": []}')


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "e 1"},
        {"source": "s\t"},
        {"subject": {"org": 1, "deployment": "d\u00e9"}},
        {"dimensions": {"model": "m", "Region": "x"}},
        {"dimensions": {"model": "m", "": "x"}},
    ],
)
def test_a_bad_name_anywhere_in_a_batch_is_that_events_problem_alone(bad):
    events = [raw(id=f"e{n}") for n in range(50)]
    events[37] = raw(**{"id": "e37", **bad})
    decoded = batch_decode(b'{"events": [' + b",".join(events) + b"]}")
    assert [n for n, d in enumerate(decoded) if isinstance(d, Rejection)] == [37]
    assert decoded[37].code == "invalid"
    assert all(isinstance(d, UsageEventIn) for n, d in enumerate(decoded) if n != 37)


def test_a_good_batch_decodes_whole():
    decoded = batch_decode(b'{"events": [' + b",".join(raw(id=f"e{n}") for n in range(20)) + b"]}")
    assert [d.id for d in decoded] == [f"e{n}" for n in range(20)]
    assert all(isinstance(d, UsageEventIn) for d in decoded)
