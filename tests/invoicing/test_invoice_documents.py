"""The canonical bytes of an invoice document are what its hash was taken over: the
encoder must give, byte for byte, what ``json.dumps`` with sorted keys, no spaces and
UTF-8 gave when the first invoices were finalized, or replaying them would fail."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from core.money import CURRENCIES, MICROS, Money, rate_amount
from invoicing.amounts import _money_of, _MoneyTexts, cents, money_text
from invoicing.documents import (
    _document,
    _document_json,
    _document_lines,
    _document_lines_json,
    _JsonStrings,
    canonical,
)
from invoicing.lines import PRODUCT_ORDER, Computed, _Line
from invoicing.models import Invoice
from invoicing.settlement import totals_of


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


_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
_lines = st.lists(
    st.builds(
        _Line,
        product=st.sampled_from(sorted(PRODUCT_ORDER)),
        description=_text,
        unit=_text,
        price_unit=_amounts,
        unit_price_micros=_amounts,
        job=_text,
        model=_text,
        gpu_model=_text,
        quantity=_amounts,
        exact_micros=_amounts,
        entries=st.dictionaries(_ids, _amounts, max_size=4),
    ),
    max_size=5,
)


def _computed(lines: list[_Line]) -> Computed:
    transfer_ids = sorted({t for line in lines for t in line.entries})
    positions = {t: 1000 + n for n, t in enumerate(transfer_ids)}
    return Computed(lines, sum(line.exact_micros for line in lines), 0, positions, 77)


@settings(max_examples=300, deadline=None)
@given(_lines, st.sampled_from(sorted(CURRENCIES)))
def test_lines_made_as_text_are_the_canonical_encoding_of_the_lines(lines, currency):
    computed = _computed(lines)
    made = _document_lines_json(computed, currency, _JsonStrings())
    assert made == canonical(_document_lines(computed, currency))


@settings(max_examples=100, deadline=None)
@given(st.lists(_lines, min_size=2, max_size=4), st.sampled_from(sorted(CURRENCIES)))
def test_invoices_sharing_their_amounts_texts_get_the_lines_each_would_alone(invoices, currency):
    # given the invoices of a chunk, made with one record of strings and amounts' texts
    strings, texts = _JsonStrings(), _MoneyTexts(currency)
    for lines in invoices:
        computed = _computed(lines)
        # then each invoice's lines are the canonical encoding of its own lines
        shared = _document_lines_json(computed, currency, strings, texts)
        assert shared == canonical(_document_lines(computed, currency))
    assert all(text == money_text(micros, currency) for micros, text in texts.items())


@settings(max_examples=200, deadline=None)
@given(_lines, _text, _text, st.booleans())
def test_a_document_made_with_its_lines_as_text_is_the_canonical_document(
    lines, name, key_tail, ahead
):
    # given an invoice whose key and buyer hold the placeholder's text itself
    invoice = Invoice(
        key=f'monthly:1:2026-10:USD"lines":0{key_tail}',
        organization_id=1,
        kind="monthly",
        currency="USD",
        period_start=datetime(2026, 10, 1, tzinfo=UTC),
        period_end=datetime(2026, 11, 1, tzinfo=UTC),
        job="",
        issuer="TDM",
    )
    computed = _computed(lines)
    if ahead:
        computed.document_lines_json = _document_lines_json(computed, "USD", _JsonStrings())
    buyer = {"name": f'"lines":0,{name}', "legal_name": name, "address": '\\"lines\\":0'}
    totals = totals_of(computed, "USD", 1900)
    arguments = {
        "invoice": invoice,
        "computed": computed,
        "totals": totals,
        "buyer": buyer,
        "number": "TDM-000042",
        "finalized_at": "2026-11-10T00:00:00+00:00",
        "due_at": "2026-11-24T00:00:00+00:00",
        "prepaid_applied": 12,
    }
    # then
    assert _document_json(**arguments) == canonical(_document(**arguments))
