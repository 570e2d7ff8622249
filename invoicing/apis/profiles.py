"""Billing profiles: what a buyer's invoices say about it."""

from __future__ import annotations

from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import (
    actor_for,
)
from core.permissions import IsPlatformFinance
from core.schema import error_responses
from core.tenancy import get_caller
from invoicing import selectors
from invoicing import services as invoicing
from invoicing.apis.common import _ORGANIZATION_ID


class BillingProfileSerializer(serializers.Serializer):
    organization = serializers.IntegerField(source="organization_id", read_only=True)
    legal_name = serializers.CharField(
        max_length=200,
        allow_blank=True,
        default="",
        help_text="empty: the organization's name",
    )
    address = serializers.CharField(
        max_length=invoicing.MAX_ADDRESS_LENGTH, allow_blank=True, default=""
    )
    tax_id = serializers.CharField(max_length=64, allow_blank=True, default="")
    tax_rate_bps = serializers.IntegerField(help_text="basis points, 0 to 10,000 (1,900 = 19%)")
    tax_label = serializers.CharField(max_length=32, allow_blank=True, default="Tax")
    updated_at = serializers.DateTimeField(read_only=True, allow_null=True)


# --- billing profiles ---------------------------------------------------------------


class BillingProfileGetApi(APIView):
    @extend_schema(
        operation_id="billing_profiles_retrieve",
        summary="Who an organization's invoices are addressed to, and its tax rate",
        description="Your own organization's; operator finance staff read any.",
        tags=["invoices"],
        parameters=[_ORGANIZATION_ID],
        responses={200: BillingProfileSerializer, **error_responses(401, 404, 429)},
    )
    def get(self, request: Request, organization_id: int) -> Response:
        organization = selectors.organization_for_caller(
            caller=get_caller(request), organization_id=organization_id
        )
        profile = selectors.billing_profile_of(organization=organization)
        return Response(BillingProfileSerializer(profile).data)


class BillingProfileSetApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="billing_profiles_set",
        summary="Set an organization's billing profile and tax rate (operator finance)",
        description="Replaces the whole profile (fields left out are empty). Invoices "
        "finalized from now on use it; finalized ones keep theirs.",
        tags=["invoices"],
        parameters=[_ORGANIZATION_ID],
        request=BillingProfileSerializer,
        responses={200: BillingProfileSerializer, **error_responses(400, 401, 403, 404, 429)},
    )
    def put(self, request: Request, organization_id: int) -> Response:
        caller = get_caller(request)
        organization = selectors.organization_for_caller(
            caller=caller, organization_id=organization_id
        )
        given = BillingProfileSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        profile = invoicing.billing_profile_set(
            organization=organization, **given.validated_data, actor=actor_for(caller)
        )
        return Response(BillingProfileSerializer(profile).data)
