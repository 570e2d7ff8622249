from __future__ import annotations

from django.urls import path

from core.apis import ApiKeyCreateApi, ApiKeyListApi, ApiKeyRevokeApi, OrganizationDetailApi
from core.routing import by_method

urlpatterns = [
    path("organization", OrganizationDetailApi.as_view(), name="organization-detail"),
    path("api-keys/", by_method(get=ApiKeyListApi, post=ApiKeyCreateApi), name="api-keys"),
    path("api-keys/<id:api_key_id>/revoke", ApiKeyRevokeApi.as_view(), name="api-key-revoke"),
]
