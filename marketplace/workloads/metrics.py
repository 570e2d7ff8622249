"""A fine-tune's training metrics (Together's ``GET /v1/fine-tunes/{id}/metrics``),
read from the job's progress events: one dict of numbers per training step
(``global_step``, ``train_loss``, ``lr``, ``epoch``, ``tokens_per_second``) and per
evaluation (``global_step``, ``eval_loss``), in step order."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils.dateparse import parse_datetime

from marketplace.workloads.errors import invalid
from marketplace.workloads.models import FineTuneJob

_TRAIN = {"loss": "train_loss", "learning_rate": "lr", "epoch": "epoch"}
_TRAIN |= {"tokens_per_second": "tokens_per_second"}
STEP_MAX = 2**31 - 1


def _step_bound(raw: str | None, param: str) -> int | None:
    if raw in (None, ""):
        return None
    if not raw.isdigit() or int(raw) > STEP_MAX:
        raise invalid(f"{param} must be a whole number from 0 to {STEP_MAX}", param=param)
    return int(raw)


def _time_bound(raw: str | None, param: str) -> datetime | None:
    if raw in (None, ""):
        return None
    moment = parse_datetime(raw)
    if moment is None or moment.tzinfo is None:
        raise invalid(f"{param} must be an ISO 8601 time with a time zone", param=param)
    return moment


def _sampled(rows: list[dict[str, float]], resolution: int | None) -> list[dict[str, float]]:
    """``resolution`` rows spread evenly over ``rows``, the first and last kept."""
    if resolution is None or len(rows) <= resolution:
        return rows
    if resolution == 1:
        return rows[-1:]
    last = len(rows) - 1
    picks = sorted({round(i * last / (resolution - 1)) for i in range(resolution)})
    return [rows[i] for i in picks]


def job_metrics(*, job: FineTuneJob, query: Any) -> list[dict[str, float]]:
    step_from = _step_bound(query.get("global_step_from"), "global_step_from")
    step_to = _step_bound(query.get("global_step_to"), "global_step_to")
    since = _time_bound(query.get("logged_at_from"), "logged_at_from")
    until = _time_bound(query.get("logged_at_to"), "logged_at_to")
    resolution = _step_bound(query.get("resolution"), "resolution")
    if resolution == 0:
        raise invalid("resolution must be at least 1", param="resolution")
    events = job.events.filter(type__in=("training_step", "eval")).order_by("pk")
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lte=until)
    train: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    for event in events:
        data = event.data or {}
        step = data.get("step")
        if not isinstance(step, int):
            continue
        if (step_from is not None and step < step_from) or (step_to is not None and step > step_to):
            continue
        if event.type == "eval":
            evals.append({"global_step": float(step), "eval_loss": float(data["eval_loss"])})
            continue
        row = {"global_step": float(step)}
        row |= {name: float(data[key]) for key, name in _TRAIN.items() if data.get(key) is not None}
        train.append(row)
    merged = _sampled(train, resolution) + evals
    return sorted(merged, key=lambda row: (row["global_step"], "eval_loss" in row))
