"""An invoice's lines as they are computed, and ``Computed``, the result of the
computation that drafts, finalization, the month close and replay all use."""

from __future__ import annotations

from dataclasses import dataclass, field

PRODUCT_ORDER = {"fine_tune": 0, "inference": 1, "gpu_lease": 2, "other": 3}


# --- computing an invoice ---------------------------------------------------------


@dataclass(slots=True)
class _Line:
    product: str
    description: str
    unit: str
    price_unit: int
    unit_price_micros: int
    job: str = ""
    model: str = ""
    gpu_model: str = ""
    region: str = ""
    quantity: int = 0
    exact_micros: int = 0
    entries: dict[str, int] = field(default_factory=dict)  # transfer id -> amount

    def copy(self) -> _Line:
        """A line like this one, with entries of its own."""
        return _Line(
            self.product,
            self.description,
            self.unit,
            self.price_unit,
            self.unit_price_micros,
            self.job,
            self.model,
            self.gpu_model,
            self.region,
            self.quantity,
            self.exact_micros,
            dict(self.entries),
        )

    def sort_key(self) -> tuple:
        return (
            PRODUCT_ORDER[self.product],
            self.job,
            self.model,
            self.gpu_model,
            self.description,
            self.unit_price_micros,
        )


@dataclass(slots=True)
class Computed:
    lines: list[_Line]
    exact_micros: int
    prepaid_micros: int  # of the exact amount, what prepaid credit paid when it was charged
    positions: dict[str, int]  # transfer id -> entry position
    as_of_position: int
    # The lines as the document shows them, as canonical JSON (``_document_lines_json``),
    # when made ahead.
    document_lines_json: bytes | None = None


def _ordered(lines: dict[tuple, _Line]) -> list[_Line]:
    return sorted((line for line in lines.values() if line.exact_micros), key=_Line.sort_key)
