"""core.validation: a declared shape checked in one place, errors naming the field."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
import pytest
from msgspec import Meta

from core.errors import InvalidInput
from core.validation import field_error, validated


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Shape(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    count: Annotated[int, Meta(ge=1, le=8)]
    name: Annotated[str, Meta(max_length=4)] = ""
    codes: Annotated[list[Annotated[str, Meta(pattern="^[A-Z]{2}$")]], Meta(max_length=2)] = []
    colour: Colour = Colour.RED
    link: Literal["", "nvlink", "pcie"] = ""
    share: Annotated[float, Meta(ge=0, le=1)] | None = None
    at: Annotated[datetime, Meta(tz=True)] | None = None


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({}, "count", "is required"),
        ({"count": 0}, "count", "must be >= 1"),
        ({"count": 9}, "count", "must be <= 8"),
        ({"count": "2"}, "count", "must be int, not str"),
        ({"count": True}, "count", "must be int, not bool"),
        ({"count": 2.0}, "count", "must be int, not float"),
        ({"count": 1, "name": "abcde"}, "name", "must have <= 4 characters"),
        ({"count": 1, "codes": ["US", "DE", "FR"]}, "codes", "must have <= 2 items"),
        ({"count": 1, "codes": ["US", "usa"]}, "codes[1]", "must match ^[A-Z]{2}$"),
        ({"count": 1, "colour": "green"}, "colour", "must be one of 'red', 'blue'"),
        ({"count": 1, "link": "token-ring"}, "link", "must be one of '', 'nvlink', 'pcie'"),
        ({"count": 1, "share": 1.5}, "share", "must be <= 1.0"),
        ({"count": 1, "at": datetime(2030, 1, 1)}, "at", "must carry a time zone"),  # noqa: DTZ001
        ({"count": 1, "extra": 1}, "extra", "is not an input here"),
    ],
)
def test_a_value_that_does_not_fit_names_its_field(values, field, message):
    with pytest.raises(InvalidInput) as caught:
        validated(Shape, values)

    assert caught.value.message == f"{field}: {message}"
    assert caught.value.details == {"fields": {field: [message]}}


def test_values_that_fit_come_back_typed():
    at = datetime(2030, 1, 1, tzinfo=UTC)

    shape = validated(Shape, {"count": 2, "colour": "blue", "share": 1, "at": at})

    assert (shape.count, shape.colour, shape.share, shape.at) == (2, Colour.BLUE, 1.0, at)


def test_an_instance_built_without_checks_is_checked_too():
    with pytest.raises(InvalidInput) as caught:
        validated(Shape, Shape(count=0))

    assert caught.value.details["fields"] == {"count": ["must be >= 1"]}


def test_field_error_carries_extra_details():
    error = field_error("window_start", "overlaps offer 3", conflicting_offer_ids=[3])

    assert error.message == "window_start: overlaps offer 3"
    assert error.details == {
        "fields": {"window_start": ["overlaps offer 3"]},
        "conflicting_offer_ids": [3],
    }
