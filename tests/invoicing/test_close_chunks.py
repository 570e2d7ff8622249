"""How a month's close cuts its orgs into chunks: in order, each org once, as many
chunks as ``CLOSE_CHUNK`` orgs to a chunk make, of about the same work each."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from invoicing import month_close as invoicing
from invoicing.month_close import CLOSE_ORG_WEIGHT, _close_chunks


def _orgs(count: int) -> list[int]:
    return list(range(1, count + 1))


def test_a_few_busy_buyers_get_a_chunk_of_their_own(monkeypatch):
    # given a month whose first 10 buyers have 500 accruals each, the other 990 ten
    monkeypatch.setattr(invoicing, "CLOSE_CHUNK", 100)
    orgs = _orgs(1000)
    accruals = {o: 500 if o <= 10 else 10 for o in orgs}

    # when
    chunks = _close_chunks(orgs, accruals)

    # then ten chunks, the busy buyers' holding fewer orgs, each of about a tenth of the work
    assert len(chunks) == 10
    assert len(chunks[0]) < 20
    weights = [sum(CLOSE_ORG_WEIGHT + accruals[o] for o in chunk) for chunk in chunks]
    assert max(weights) - min(weights) <= CLOSE_ORG_WEIGHT + 500


def test_one_org_to_a_chunk_gives_each_its_own(monkeypatch):
    monkeypatch.setattr(invoicing, "CLOSE_CHUNK", 1)
    orgs = _orgs(3)
    assert _close_chunks(orgs, {1: 0, 2: 700, 3: 5}) == [[o] for o in orgs]


@settings(max_examples=200, deadline=None)
@given(
    accruals=st.lists(st.integers(min_value=0, max_value=5000), min_size=0, max_size=300),
    chunk=st.integers(min_value=1, max_value=120),
)
def test_chunks_keep_every_org_once_in_order_and_balance_the_work(accruals, chunk):
    orgs = _orgs(len(accruals))
    counts = {o: n for o, n in zip(orgs, accruals, strict=True)}
    original = invoicing.CLOSE_CHUNK
    invoicing.CLOSE_CHUNK = chunk
    try:
        chunks = _close_chunks(orgs, counts)
    finally:
        invoicing.CLOSE_CHUNK = original

    assert [o for c in chunks for o in c] == orgs
    assert all(chunks)
    assert len(chunks) <= -(-len(orgs) // chunk)
    if orgs:
        # no chunk outweighs an even share by more than one org's weight
        weights = [CLOSE_ORG_WEIGHT + n for n in accruals]
        share = sum(weights) / -(-len(orgs) // chunk)
        heaviest = max(weights)
        for c in chunks:
            assert sum(CLOSE_ORG_WEIGHT + counts[o] for o in c) <= share + heaviest
