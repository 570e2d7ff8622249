"""Read-only admin for the ledger's tables.

They are projections of the event store: a row edited here would disagree with the
journal and be overwritten by the next rebuild. Corrections are journal entries
(POST /api/v1/journal/adjustments), never edits.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from ledger.models import Account, Balance, Hold, Posting


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "organization",
        "kind",
        "currency",
        "normal_side",
        "overdraft_limit_micros",
        "created_at",
    ]
    list_filter = ["kind", "currency"]
    list_select_related = ["organization"]
    search_fields = ["organization__name"]


@admin.register(Balance)
class BalanceAdmin(ReadOnlyAdmin):
    list_display = [
        "account",
        "debits_posted",
        "credits_posted",
        "debits_pending",
        "credits_pending",
        "position",
    ]
    list_filter = ["account__kind", "account__currency"]
    list_select_related = ["account__organization"]
    search_fields = ["account__organization__name"]


@admin.register(Posting)
class PostingAdmin(ReadOnlyAdmin):
    list_display = ["id", "entry_id", "account", "side", "amount_micros", "currency", "recorded_at"]
    list_filter = ["side", "currency"]
    list_select_related = ["account__organization"]
    search_fields = ["account__organization__name"]
    date_hierarchy = "recorded_at"
    show_full_result_count = False  # the journal grows without bound: skip COUNT(*)


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = [
        "hold_id",
        "debit_account",
        "credit_account",
        "amount_micros",
        "posted_micros",
        "currency",
        "state",
        "expires_at",
        "created_at",
    ]
    list_filter = ["state", "currency"]
    list_select_related = ["debit_account__organization", "credit_account__organization"]
    search_fields = ["hold_id"]
    date_hierarchy = "created_at"
    show_full_result_count = False
