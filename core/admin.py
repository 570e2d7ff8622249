"""The tenancy tables in Django's admin, read-mostly.

Organizations and API keys are made with the ``create_org`` and ``create_api_key``
commands (or the API), which validate and show a new key once; here operators look,
rename, change a member's role and revoke keys. A key's hash is never shown.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from core import services
from core.models import ApiKey, IdempotentRequest, Membership, Organization


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        editable = set(getattr(self, "editable_fields", ()))
        return [f.name for f in self.model._meta.fields if f.name not in editable]


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]
    raw_id_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(ReadOnlyAdmin):
    list_display = ["id", "name", "kind", "is_operator", "created_at"]
    list_filter = ["kind", "is_operator"]
    search_fields = ["name"]
    editable_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "organization", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "user__email", "organization__name"]
    raw_id_fields = ["user", "organization"]
    readonly_fields = ["created_at"]


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ["id", "organization", "name", "role", "prefix", "last_used_at", "revoked_at"]
    list_filter = ["role", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "organization__name"]
    list_select_related = ["organization"]
    exclude = ["hashed_key"]
    actions = ["revoke"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [name for name in super().get_readonly_fields(request, obj) if name != "hashed_key"]

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset.filter(revoked_at=None).order_by("pk"):
            services.api_key_revoke(api_key=api_key)
        self.message_user(request, "Revoked the selected keys.", messages.SUCCESS)


@admin.register(IdempotentRequest)
class IdempotentRequestAdmin(ReadOnlyAdmin):
    list_display = ["id", "organization", "key", "method", "path", "status_code", "completed_at"]
    list_filter = ["status_code"]
    search_fields = ["key", "organization__name"]
    list_select_related = ["organization"]

    # Deleting an unfinished claim lets the request be retried at once.
    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super(ReadOnlyAdmin, self).has_delete_permission(request, obj)


# --- two-factor devices (django-otp) --------------------------------------------------
#
# Operators see who has two-factor sign-in and may delete a device (for a person who
# lost both the device and the backup codes). django-otp's own admins are replaced:
# theirs show a device's secret as a QR code and its backup codes, on pages whose
# URLs take an unbounded integer.
for _device_model in (TOTPDevice, StaticDevice):
    if admin.site.is_registered(_device_model):
        admin.site.unregister(_device_model)


@admin.register(TOTPDevice, StaticDevice)
class TwoFactorDeviceAdmin(admin.ModelAdmin):
    list_display = ("user", "name", "confirmed")
    list_select_related = ("user",)
    search_fields = ("user__email", "user__username")
    fields = ("user", "name", "confirmed")
    readonly_fields = ("user", "name", "confirmed")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
