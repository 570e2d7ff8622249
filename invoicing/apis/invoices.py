"""Invoices: the list, the current draft and one invoice with its lines."""

from __future__ import annotations

from datetime import date

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import (
    ChoiceText,
    MoneyText,
)
from core.converters import query_id
from core.errors import NotFound
from core.money import Money
from core.pagination import page_serializer, paginated_response
from core.schema import error_responses
from core.tenancy import get_caller
from invoicing import selectors
from invoicing import services as invoicing
from invoicing.apis.common import _INVOICE_ID, _query_choice, _query_period
from invoicing.models import Invoice

# --- invoices ---------------------------------------------------------------------


class InvoiceLineEntrySerializer(serializers.Serializer):
    position = serializers.IntegerField(
        source="entry_position", read_only=True, help_text="the journal entry's event position"
    )
    transfer_id = serializers.CharField(read_only=True)
    amount_micros = serializers.IntegerField(
        read_only=True, help_text="of that entry's charge, what this line carries"
    )
    amount = MoneyText("amount_micros", "line.invoice.currency")


class InvoiceLineSerializer(serializers.Serializer):
    ordinal = serializers.IntegerField(read_only=True)
    product = ChoiceText(read_only=True, help_text="fine_tune, inference, gpu_lease or other")
    description = serializers.CharField(read_only=True)
    job = serializers.CharField(read_only=True)
    model = serializers.CharField(read_only=True)
    gpu_model = serializers.CharField(read_only=True)
    quantity = serializers.IntegerField(read_only=True)
    unit = serializers.CharField(read_only=True, help_text="tokens, gpu_seconds or item")
    price_unit = serializers.IntegerField(
        read_only=True,
        help_text="the quantity the unit price is for (1,000,000 tokens, "
        "3,600 GPU-seconds, 1 item)",
    )
    unit_price_micros = serializers.IntegerField(read_only=True)
    unit_price = MoneyText("unit_price_micros", "invoice.currency")
    exact_micros = serializers.IntegerField(read_only=True, help_text="the journal's exact amount")
    exact = MoneyText("exact_micros", "invoice.currency")
    amount_micros = serializers.IntegerField(read_only=True, help_text="rounded to cents")
    amount = MoneyText("amount_micros", "invoice.currency")
    entries = InvoiceLineEntrySerializer(many=True, read_only=True)


class InvoiceSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    number = serializers.CharField(read_only=True, allow_null=True, help_text="null: a draft")
    organization = serializers.IntegerField(source="organization_id", read_only=True)
    kind = ChoiceText(read_only=True, help_text="monthly or job")
    status = ChoiceText(
        read_only=True, help_text="draft, open, past_due, paid, void or uncollectible"
    )
    currency = serializers.CharField(read_only=True)
    period_start = serializers.DateTimeField(read_only=True)
    period_end = serializers.DateTimeField(read_only=True, help_text="exclusive")
    job = serializers.CharField(read_only=True)
    issuer = serializers.CharField(read_only=True)
    subtotal_exact_micros = serializers.IntegerField(read_only=True)
    subtotal_exact = MoneyText("subtotal_exact_micros")
    subtotal_micros = serializers.IntegerField(read_only=True)
    subtotal = MoneyText("subtotal_micros")
    rounding_micros = serializers.IntegerField(read_only=True)
    rounding = MoneyText("rounding_micros")
    tax_rate_bps = serializers.IntegerField(read_only=True)
    tax_micros = serializers.IntegerField(read_only=True)
    tax = MoneyText("tax_micros")
    total_micros = serializers.IntegerField(read_only=True)
    total = MoneyText("total_micros")
    prepaid_applied_micros = serializers.IntegerField(read_only=True)
    prepaid_applied = MoneyText("prepaid_applied_micros")
    amount_due_micros = serializers.IntegerField(read_only=True)
    amount_due = MoneyText("amount_due_micros")
    amount_paid_micros = serializers.IntegerField(read_only=True)
    amount_paid = MoneyText("amount_paid_micros")
    credited_micros = serializers.IntegerField(read_only=True, help_text="credit notes, tax in")
    credited = MoneyText("credited_micros")
    written_off_micros = serializers.IntegerField(read_only=True)
    written_off = MoneyText("written_off_micros")
    generated_at = serializers.DateTimeField(read_only=True)
    finalized_at = serializers.DateTimeField(read_only=True, allow_null=True)
    due_at = serializers.DateTimeField(read_only=True, allow_null=True)
    closed_at = serializers.DateTimeField(read_only=True, allow_null=True)
    payment_reference = serializers.CharField(read_only=True)
    document_sha256 = serializers.CharField(
        read_only=True, help_text="of the canonical JSON document, recorded at finalization"
    )


class InvoiceDetailSerializer(InvoiceSerializer):
    outstanding_micros = serializers.SerializerMethodField(
        help_text="what is still owed on a finalized invoice; null for a draft"
    )
    outstanding = serializers.SerializerMethodField()
    lines = InvoiceLineSerializer(many=True, read_only=True)
    html = serializers.SerializerMethodField(help_text="the rendered invoice (HTML)")
    pdf = serializers.SerializerMethodField(help_text="the rendered invoice (PDF)")

    def get_outstanding_micros(self, invoice: Invoice) -> int | None:
        if invoice.status == Invoice.Status.DRAFT:
            return None
        return selectors.outstanding(invoice)

    @extend_schema_field({"type": "string", "nullable": True})
    def get_outstanding(self, invoice: Invoice) -> str | None:
        micros = self.get_outstanding_micros(invoice)
        return None if micros is None else Money(micros, invoice.currency).format()

    def get_html(self, invoice: Invoice) -> str:
        return f"/api/v1/invoices/{invoice.pk}.html"

    def get_pdf(self, invoice: Invoice) -> str:
        return f"/api/v1/invoices/{invoice.pk}.pdf"


class InvoiceListApi(APIView):
    @extend_schema(
        operation_id="invoices_list",
        summary="Your organization's invoices, drafts included, newest first",
        description="Operator finance staff see every organization's (organization= "
        "narrows it to one).",
        tags=["invoices"],
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=Invoice.Status.values),
            OpenApiParameter("kind", OpenApiTypes.STR, enum=Invoice.Kind.values),
            OpenApiParameter(
                "period", OpenApiTypes.STR, description="YYYY-MM: periods starting that month"
            ),
            OpenApiParameter(
                "organization", OpenApiTypes.INT, description="operator finance: one org"
            ),
        ],
        responses={200: page_serializer(InvoiceSerializer), **error_responses(400, 401, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        invoices = selectors.invoices_for_caller(
            caller=caller,
            status=_query_choice(request, "status", Invoice.Status.values),
            kind=_query_choice(request, "kind", Invoice.Kind.values),
            period=_query_period(request),
            organization_id=query_id(request, "organization"),
        )
        return paginated_response(
            queryset=invoices, serializer_class=InvoiceSerializer, request=request, view=self
        )


class InvoiceDraftApi(APIView):
    @extend_schema(
        operation_id="invoices_draft",
        summary="This month's invoice so far: the draft, recomputed from the journal now",
        description="period=YYYY-MM for another month not yet begun to be invoiced "
        "(e.g. last month during its grace days); a month already finalized answers "
        "its final invoice. 404 when the month has charged nothing yet.",
        tags=["invoices"],
        parameters=[OpenApiParameter("period", OpenApiTypes.STR, description="YYYY-MM")],
        responses={200: InvoiceDetailSerializer, **error_responses(400, 401, 404, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        now = timezone.now()
        period = _query_period(request) or date(now.year, now.month, 1)
        invoice = invoicing.invoice_draft_current(
            organization=caller.organization, period=period, now=now
        )
        if invoice is None:
            raise NotFound(
                f"nothing was charged to {caller.organization.name} in {period:%Y-%m} yet",
                details={"period": f"{period:%Y-%m}"},
            )
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice.pk)
        return Response(InvoiceDetailSerializer(invoice).data)


class InvoiceDetailApi(APIView):
    @extend_schema(
        operation_id="invoices_retrieve",
        summary="One invoice: its lines and the journal entries each line carries",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        responses={200: InvoiceDetailSerializer, **error_responses(401, 404, 429)},
    )
    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = selectors.invoice_get(caller=get_caller(request), invoice_id=invoice_id)
        return Response(InvoiceDetailSerializer(invoice).data)
