"""A training example once tokenized, and the error a bad training file raises:
what the dataset readers, the tokenizer and the packer share."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import InvalidInput

IGNORE = -100


class DatasetInvalid(InvalidInput):
    code = "invalid_dataset"


@dataclass(frozen=True, slots=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken

    @property
    def tokens(self) -> int:
        return len(self.input_ids)
