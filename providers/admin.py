"""Supply tables in Django's admin, read-only: changes go through the services (and
so through the event store), never through a form."""

from __future__ import annotations

from django.contrib import admin

from core.admin import ReadOnlyAdmin
from providers.models import AgentKey, Gpu, Node, NodeLeaseOutcome, Offer, Site


@admin.register(Site)
class SiteAdmin(ReadOnlyAdmin):
    list_display = ["name", "organization", "region", "country", "created_at"]
    list_filter = ["region"]
    search_fields = ["name"]


class GpuInline(admin.TabularInline):
    model = Gpu
    extra = 0
    fields = ("index", "uuid", "name", "model", "memory_total_mib", "interconnect", "present")
    readonly_fields = (
        "index",
        "uuid",
        "name",
        "model",
        "memory_total_mib",
        "interconnect",
        "present",
    )
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(Node)
class NodeAdmin(ReadOnlyAdmin):
    list_display = [
        "hostname",
        "organization",
        "site",
        "health",
        "last_heartbeat_at",
        "reliability_score",
    ]
    list_filter = ["health"]
    search_fields = ["hostname"]
    inlines = [GpuInline]


@admin.register(Offer)
class OfferAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "organization",
        "node",
        "gpu_model",
        "gpu_count",
        "price_per_gpu_hour_micros",
        "kind",
        "status",
        "region",
    ]
    list_filter = ["status", "kind", "gpu_model"]


@admin.register(AgentKey)
class AgentKeyAdmin(ReadOnlyAdmin):
    list_display = ["name", "organization", "api_key", "created_at"]


@admin.register(NodeLeaseOutcome)
class NodeLeaseOutcomeAdmin(ReadOnlyAdmin):
    list_display = ["lease_id", "node", "outcome", "ended_at"]
