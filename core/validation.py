"""Declared input shapes, checked in one place.

A service that takes structured input declares its shape once, as a ``msgspec.Struct``
whose fields carry their constraints (``Annotated[int, Meta(ge=1, le=64)]``, a
``pattern``, a ``max_length``, ``tz=True``, an enum or a ``Literal`` of choices), and
calls ``validated(Shape, values)`` before it writes anything. A value that does not
fit is an ``InvalidInput`` naming the field in its message and in
``details.fields`` (``gpu_count: must be >= 1``; ``countries[0]: must match
^[A-Za-z]{2}$``), the shape the API's one error handler renders as a 400 and the
portal's forms show beside the field. The rules a schema cannot say (a price against
a floor, a node that belongs to the caller, one field against another) stay short
explicit checks in the service, raised with ``field_error``.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from core.errors import InvalidInput

Shape = TypeVar("Shape", bound=msgspec.Struct)

_WHERE = re.compile(r"^(?P<what>.*) - at `\$(?P<path>.*)`$", re.DOTALL)
_BOUND = re.compile(r"^Expected `[^`]+` (?P<op>[<>]=?) (?P<limit>\S+)$")
_LENGTH = re.compile(r"^Expected `(?P<kind>[^`]+)` of length (?P<op>[<>]=?) (?P<limit>\d+)$")
_PATTERN = re.compile(r"^Expected `str` matching regex '(?P<pattern>.*)'$", re.DOTALL)
_TYPE = re.compile(r"^Expected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
_CHOICE = re.compile(r"^Invalid enum value (?P<value>.*)$")


def field_error(field: str, message: str, **details: Any) -> InvalidInput:
    """The error for one field: ``field: message``, with the field in ``details``."""
    return InvalidInput(f"{field}: {message}", details={"fields": {field: [message]}, **details})


def validated(shape: type[Shape], values: Mapping[str, Any] | msgspec.Struct) -> Shape:
    """``values`` (keywords, or an instance of ``shape`` built without checks) as a
    checked ``shape``; InvalidInput naming the first field that does not fit."""
    if isinstance(values, msgspec.Struct):
        values = msgspec.structs.asdict(values)
    try:
        return msgspec.convert(values, type=shape, strict=True)
    except msgspec.ValidationError as error:
        field, message = _explain(shape, str(error))
        raise field_error(field, message) from None


def _explain(shape: type[msgspec.Struct], text: str) -> tuple[str, str]:
    """msgspec's ``Expected `int` >= 1 - at `$.gpu_count``` as
    ``("gpu_count", "must be >= 1")``."""
    where = _WHERE.match(text)
    what, path = (where["what"], where["path"].lstrip(".")) if where else (text, "")
    if found := _MISSING.match(what):
        return found["field"], "is required"
    if found := _UNKNOWN.match(what):
        return found["field"], "is not an input here"
    if found := _BOUND.match(what):
        return path, f"must be {found['op']} {found['limit']}"
    if found := _LENGTH.match(what):
        unit = "characters" if found["kind"] == "str" else "items"
        return path, f"must have {found['op']} {found['limit']} {unit}"
    if found := _PATTERN.match(what):
        return path, f"must match {found['pattern']}"
    if what == "Expected `datetime` with a timezone component":
        return path, "must carry a time zone"
    if found := _TYPE.match(what):
        return path, f"must be {found['expected']}, not {found['got']}"
    if _CHOICE.match(what) and (choices := _choices(shape, path)):
        return path, f"must be one of {', '.join(repr(c) for c in choices)}"
    return path or "input", what[:1].lower() + what[1:]


def _choices(shape: type[msgspec.Struct], field: str) -> list[Any]:
    """The values an enum or Literal field accepts (top-level fields only)."""
    kind = typing.get_type_hints(shape).get(field)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next((k for k in typing.get_args(kind) if k is not type(None)), None)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return [member.value for member in kind]
    if typing.get_origin(kind) is typing.Literal:
        return list(typing.get_args(kind))
    return []
