"""The canonical bytes of an invoice document are what its hash was taken over: the
encoder must give, byte for byte, what ``json.dumps`` with sorted keys, no spaces and
UTF-8 gave when the first invoices were finalized, or replaying them would fail."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.invoicing import _money_of, canonical, cents, money_text
from core.money import CURRENCIES, MICROS, Money, rate_amount


def _reference(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)  # no lone surrogates
_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | _text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_text, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_text, _values, max_size=8))
def test_canonical_matches_sorted_compact_json_byte_for_byte(document):
    assert canonical(document) == _reference(document)


def test_canonical_escapes_control_characters_and_keeps_the_rest_as_utf8():
    # given every character below U+0800, the line separators and a non-BMP one
    document = {
        "ß": [chr(cp) for cp in range(0x800)] + ["\u2028\u2029", "\U0001f600"],
        "Z": {"b": 1, "a": -1},
    }
    # then
    assert canonical(document) == _reference(document)
    assert canonical(document).startswith(b'{"Z":{"a":-1,"b":1},"\xc3\x9f":["\\u0000"')


_amounts = st.integers(min_value=-(10**15), max_value=10**15)


@settings(max_examples=500, deadline=None)
@given(_amounts, st.sampled_from(sorted(CURRENCIES)))
def test_document_amounts_are_the_money_types_own(micros, currency):
    # the fast paths a close takes give what Money and rate_amount give
    step = MICROS // 10 ** CURRENCIES[currency]
    assert cents(micros, currency) == rate_amount(micros, 1, step) * step
    assert _money_of(currency)(micros) == {
        "micros": micros,
        "text": Money(micros, currency).format(),
    }
    assert money_text(micros, currency) == Money(micros, currency).format()
