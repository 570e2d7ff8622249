"""How long telemetry is kept, and its pruning."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from providers.models import GpuMinuteRollup, NodeHeartbeatMinute, NodeLeaseOutcome

# Heartbeat minutes and lease outcomes are the reliability score's inputs: kept for
# its window (30 days) plus a margin. Per-GPU minute rollups are for the portal's
# charts: a week. So a node holds at most 35 x 1,440 heartbeat-minute rows, and a
# GPU one sample row and at most 7 x 1,440 rollup rows, however often it reports.
TELEMETRY_RETENTION = timedelta(days=35)
GPU_ROLLUP_RETENTION = timedelta(days=7)


@transaction.atomic
def telemetry_prune(*, now: datetime | None = None) -> int:
    """Delete telemetry older than its retention (see TELEMETRY_RETENTION)."""
    now = now or timezone.now()
    cutoff = now - TELEMETRY_RETENTION
    deleted = GpuMinuteRollup.objects.filter(minute__lt=now - GPU_ROLLUP_RETENTION).delete()[0]
    deleted += NodeHeartbeatMinute.objects.filter(minute__lt=cutoff).delete()[0]
    deleted += NodeLeaseOutcome.objects.filter(ended_at__lt=cutoff).delete()[0]
    return deleted
