from __future__ import annotations

from datetime import UTC, datetime
from itertools import count

import pytest

_ids = count(1)


@pytest.fixture
def usage_event():
    """A valid usage event as JSON-ready dict; keyword arguments replace fields."""

    def make(org, **changes) -> dict:
        event = {
            "id": f"evt-{next(_ids)}",
            "source": "runtime/node-1",
            "type": "tokens.training",
            "subject": {"org": org.pk, "job": "ft-1"},
            "time": datetime.now(UTC).isoformat(),
            "quantity": 1000,
            "dimensions": {"model": "llama-3.1-8b", "training_type": "lora-sft"},
        }
        event.update(changes)
        return event

    return make
