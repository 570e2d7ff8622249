from __future__ import annotations

from datetime import UTC, datetime
from itertools import count

import pytest

from tests.subjects import job_for

_ids = count(1)


@pytest.fixture
def usage_event():
    """A valid usage event as JSON-ready dict; keyword arguments replace fields. Its
    subject is a real fine-tune job of ``org`` (usage is accepted only for a subject
    the platform made); an org that is not a buyer gets an invented one."""

    def make(org, **changes) -> dict:
        job = job_for(org).public_id if org.is_buyer else "ft-1"
        event = {
            "id": f"evt-{next(_ids)}",
            "source": "runtime/node-1",
            "type": "tokens.training",
            "subject": {"org": org.pk, "job": job},
            "time": datetime.now(UTC).isoformat(),
            "quantity": 1000,
            "dimensions": {"model": "llama-3.1-8b", "training_type": "lora-sft"},
        }
        event.update(changes)
        return event

    return make
