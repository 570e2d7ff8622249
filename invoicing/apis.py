"""HTTP endpoints of billing under /api/v1/: accounts and balances, the journal, the
trial balance and finance's manual corrections; the price book, invoices and credit
notes, billing profiles, and providers' monthly statements.

One view per operation: parse input, check permission, call one selector or service,
serialize output. Tenancy is decided in invoicing.selectors from ``request.caller``.
Amounts go out twice: exact integer micro-units (``*_micros``) and the same as
decimal text (``"25.00"``). They come in as decimal text only (``"12.34"``), never as
JSON numbers, which many clients turn into binary floats.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.permissions import BasePermission
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import (
    MAX_DB_ID,
    MAX_REASON_LENGTH,
    ChoiceText,
    DecimalTextField,
    MoneyText,
    actor_for,
)
from core.converters import query_id
from core.errors import InvalidInput, NotFound
from core.idempotency import idempotency_key, idempotent
from core.money import Money, MoneyError
from core.pagination import page_serializer, paginated_response
from core.permissions import IsPlatformFinance
from core.schema import error_responses
from core.tenancy import Caller, get_caller
from invoicing import documents, selectors
from invoicing import services as invoicing
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


class CreditNoteSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    invoice = serializers.IntegerField(source="invoice_id", read_only=True)
    number = serializers.CharField(read_only=True)
    currency = serializers.CharField(read_only=True)
    amount_micros = serializers.IntegerField(read_only=True, help_text="before tax")
    amount = MoneyText("amount_micros")
    tax_micros = serializers.IntegerField(read_only=True)
    tax = MoneyText("tax_micros")
    total_micros = serializers.IntegerField(read_only=True)
    total = MoneyText("total_micros")
    to_receivable_micros = serializers.IntegerField(
        read_only=True, help_text="taken off what the buyer owed on the invoice"
    )
    to_receivable = MoneyText("to_receivable_micros")
    to_credit_micros = serializers.IntegerField(
        read_only=True, help_text="given back as prepaid credit"
    )
    to_credit = MoneyText("to_credit_micros")
    reason = serializers.CharField(read_only=True)
    entry_position = serializers.IntegerField(
        read_only=True, help_text="the journal entry that posted it"
    )
    issued_at = serializers.DateTimeField(read_only=True)
    issued_by = serializers.CharField(read_only=True)


class CreditNoteInputSerializer(serializers.Serializer):
    amount = DecimalTextField(help_text="before tax, whole cents; the tax on it is added")
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH)


class ReasonInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH)


class OptionalReasonInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH, required=False, default="")


class MarkPaidInputSerializer(serializers.Serializer):
    payment_reference = serializers.CharField(
        max_length=255, help_text="the bank transfer's reference, or another payment's id"
    )


class JobInvoiceInputSerializer(serializers.Serializer):
    organization = serializers.IntegerField(min_value=1, max_value=MAX_DB_ID)
    job = serializers.CharField(max_length=200, help_text="the fine-tune job's id")


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


def _query_period(request: Request, name: str = "period") -> date | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    return _period(raw, name)


def _period(raw: str, name: str = "period") -> date:
    try:
        year, month = (int(part) for part in raw.split("-"))
        if len(raw) != 7 or year < 2000:
            raise ValueError(raw)
        return date(year, month, 1)
    except ValueError:
        raise InvalidInput(
            f"{name} must be a month as YYYY-MM (e.g. 2026-10), not {raw[:20]!r}",
            details={"parameter": name},
        ) from None


def _query_choice(request: Request, name: str, choices: list[str]) -> str | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if raw not in choices:
        raise InvalidInput(
            f"{name} must be one of {', '.join(choices)}", details={"parameter": name}
        )
    return raw


_INVOICE_ID = OpenApiParameter("invoice_id", OpenApiTypes.INT, OpenApiParameter.PATH)
_ORGANIZATION_ID = OpenApiParameter("organization_id", OpenApiTypes.INT, OpenApiParameter.PATH)


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


class _DocumentRenderer(BaseRenderer):
    """The one type a document endpoint answers, for content negotiation; the view
    answers the bytes itself, and errors go out as JSON (below)."""

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        return JSONRenderer().render(data)


class _PdfRenderer(_DocumentRenderer):
    media_type = "application/pdf"
    format = "pdf"
    charset = None


class _HtmlRenderer(_DocumentRenderer):
    media_type = "text/html"
    format = "html"


class _InvoiceDocumentApi(APIView):
    content_type = ""

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        if isinstance(response, Response):  # an error: always in the API's JSON shape
            response.accepted_renderer = JSONRenderer()
            response.accepted_media_type = "application/json"
        return response

    def _answer(self, request: Request, invoice_id: int, body: Callable[[Invoice], bytes]) -> Any:
        invoice = selectors.invoice_get(caller=get_caller(request), invoice_id=invoice_id)
        response = HttpResponse(body(invoice), content_type=self.content_type)
        name = invoice.number or f"draft-{invoice.pk}"
        extension = "pdf" if self.content_type == "application/pdf" else "html"
        response["Content-Disposition"] = f'inline; filename="{name}.{extension}"'
        response["ETag"] = f'"{invoice.document_sha256}"'
        return response


def _document_errors(*codes: int) -> dict[Any, Any]:
    return {
        (code, "application/json"): response for code, response in error_responses(*codes).items()
    }


class InvoiceHtmlApi(_InvoiceDocumentApi):
    renderer_classes = [_HtmlRenderer]
    content_type = "text/html; charset=utf-8"

    @extend_schema(
        operation_id="invoices_html",
        summary="The invoice rendered as HTML",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        responses={(200, "text/html"): OpenApiTypes.STR, **_document_errors(401, 404, 429)},
    )
    def get(self, request: Request, invoice_id: int) -> Any:
        return self._answer(request, invoice_id, documents.invoice_html)


class InvoicePdfApi(_InvoiceDocumentApi):
    renderer_classes = [_PdfRenderer]
    content_type = "application/pdf"

    @extend_schema(
        operation_id="invoices_pdf",
        summary="The invoice rendered as PDF",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        responses={
            (200, "application/pdf"): OpenApiTypes.BINARY,
            **_document_errors(401, 404, 429),
        },
    )
    def get(self, request: Request, invoice_id: int) -> Any:
        return self._answer(request, invoice_id, documents.invoice_pdf)


class CreditNoteListApi(APIView):
    @extend_schema(
        operation_id="invoices_credit_notes_list",
        summary="The credit notes issued on an invoice, newest first",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        responses={
            200: page_serializer(CreditNoteSerializer),
            **error_responses(400, 401, 404, 429),
        },
    )
    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = selectors.invoice_get(caller=get_caller(request), invoice_id=invoice_id)
        return paginated_response(
            queryset=selectors.credit_notes_of(invoice=invoice),
            serializer_class=CreditNoteSerializer,
            request=request,
            view=self,
        )


class CreditNoteCreateApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_credit_notes_create",
        summary="Issue a credit note on a finalized invoice (operator finance)",
        description="amount is before tax, in whole cents; the tax on it is given back "
        "too. What the buyer still owes on the invoice is reduced first, the rest "
        "becomes prepaid credit. All credit notes together may not exceed the "
        "invoice's subtotal.",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=CreditNoteInputSerializer,
        responses={
            201: CreditNoteSerializer,
            **error_responses(400, 401, 403, 404, 409, 422, 429),
        },
    )
    # Not atomic: the ledger runs its own transaction; the credit note is keyed by the
    # Idempotency-Key, so a taken-over claim issues nothing twice.
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        key = idempotency_key(request, required=True)
        given = CreditNoteInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            amount = Money.parse(given.validated_data["amount"], invoice.currency).amount_micros
        except MoneyError as exc:
            raise InvalidInput(f"amount: {exc}", details={"field": "amount"}) from None
        note = invoicing.credit_note_issue(
            invoice=invoice,
            amount_micros=amount,
            reason=given.validated_data["reason"],
            key=f"api:{caller.organization.pk}:{key}",
            actor=actor_for(caller),
        )
        return Response(CreditNoteSerializer(note).data, status=status.HTTP_201_CREATED)


def _invoice_answer(caller: Caller, invoice: Invoice) -> Response:
    fresh = selectors.invoice_get(caller=caller, invoice_id=invoice.pk)
    return Response(InvoiceDetailSerializer(fresh).data)


_LIFECYCLE_ERRORS = error_responses(400, 401, 403, 404, 409, 422, 429)


class InvoiceFinalizeApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_finalize",
        summary="Finalize a draft now (operator finance)",
        description="Numbers it, posts rounding, tax and the prepaid credit applied, and "
        "freezes its document. A monthly draft only once its month has ended; a final "
        "invoice is answered as it is.",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=None,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    # Not atomic: finalizing closes the usage month and catches rating up in
    # transactions of its own; a finalized invoice stays as it is, so a retry is safe.
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        invoice = invoicing.invoice_finalize_requested(invoice=invoice, actor=actor_for(caller))
        return _invoice_answer(caller, invoice)


class InvoiceVoidApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_void",
        summary="Void an unpaid finalized invoice (operator finance)",
        description="Reverses everything it posted; its number stays used. An invoice "
        "with payments or credit notes is corrected by a credit note instead (409).",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=ReasonInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        given = ReasonInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        invoice = invoicing.invoice_void(
            invoice=invoice, reason=given.validated_data["reason"], actor=actor_for(caller)
        )
        return _invoice_answer(caller, invoice)


class InvoiceMarkUncollectibleApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_mark_uncollectible",
        summary="Write off what is still owed on an invoice (operator finance)",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=OptionalReasonInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        given = OptionalReasonInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        invoice = invoicing.invoice_mark_uncollectible(
            invoice=invoice, reason=given.validated_data["reason"], actor=actor_for(caller)
        )
        return _invoice_answer(caller, invoice)


class InvoiceMarkPaidApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_mark_paid",
        summary="Record that an invoice was paid outside Stripe (operator finance)",
        description="A bank transfer or another manual payment of everything still "
        "owed: the receivable is settled and the invoice closed. The same reference "
        "again changes nothing.",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=MarkPaidInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        given = MarkPaidInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        invoice = invoicing.invoice_mark_paid(
            invoice=invoice,
            payment_reference=given.validated_data["payment_reference"],
            actor=actor_for(caller),
        )
        return _invoice_answer(caller, invoice)


class JobInvoiceIssueApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_job_issue",
        summary="Invoice one ended fine-tune job on its own, now (operator finance)",
        description="Finalized at once, with the per-job minimum applied; the job then "
        "stays off the monthly invoice. Asking again answers the same invoice.",
        tags=["invoices"],
        request=JobInvoiceInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = JobInvoiceInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        organization = selectors.organization_for_caller(
            caller=caller, organization_id=given.validated_data["organization"]
        )
        invoice = invoicing.invoice_job_request(
            organization=organization, job=given.validated_data["job"], actor=actor_for(caller)
        )
        return _invoice_answer(caller, invoice)


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


# --- provider statements --------------------------------------------------------------


class IsProviderOrPlatformFinance(BasePermission):
    message = "this needs a provider organization (or the operator's finance staff)"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = getattr(request, "caller", None)
        return caller is not None and (
            caller.organization.is_provider or caller.is_platform_finance
        )


class ProviderStatementSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    organization = serializers.IntegerField(source="organization_id", read_only=True)
    period = serializers.SerializerMethodField(help_text="YYYY-MM")
    currency = serializers.CharField(read_only=True)
    gpu_seconds = serializers.IntegerField(read_only=True)
    gross_micros = serializers.IntegerField(read_only=True, help_text="at lease prices")
    gross = MoneyText("gross_micros")
    fee_micros = serializers.IntegerField(
        read_only=True, help_text="the platform fee buyers paid on top (not deducted)"
    )
    fee = MoneyText("fee_micros")
    net_payable_micros = serializers.IntegerField(read_only=True)
    net_payable = MoneyText("net_payable_micros")
    payouts_micros = serializers.IntegerField(read_only=True)
    payouts = MoneyText("payouts_micros")
    closing_balance_micros = serializers.IntegerField(
        read_only=True, help_text="the payable at the end of the month"
    )
    closing_balance = MoneyText("closing_balance_micros")
    generated_at = serializers.DateTimeField(read_only=True)

    def get_period(self, statement: Any) -> str:
        return f"{statement.period_start:%Y-%m}"


class ProviderStatementListApi(APIView):
    permission_classes = [IsProviderOrPlatformFinance]

    @extend_schema(
        operation_id="statements_list",
        summary="Your monthly statements of closed months, newest first (providers)",
        description="Operator finance staff see every provider's (organization= narrows "
        "it to one). The current month: GET /api/v1/statements/{period}.",
        tags=["statements"],
        parameters=[
            OpenApiParameter(
                "organization", OpenApiTypes.INT, description="operator finance: one org"
            )
        ],
        responses={
            200: page_serializer(ProviderStatementSerializer),
            **error_responses(400, 401, 403, 429),
        },
    )
    def get(self, request: Request) -> Response:
        statements = selectors.statements_for_caller(
            caller=get_caller(request), organization_id=query_id(request, "organization")
        )
        return paginated_response(
            queryset=statements,
            serializer_class=ProviderStatementSerializer,
            request=request,
            view=self,
        )


class ProviderStatementDetailApi(APIView):
    permission_classes = [IsProviderOrPlatformFinance]

    @extend_schema(
        operation_id="statements_retrieve",
        summary="A provider's month: GPU time per node and GPU model, earnings, fees, payouts",
        description="A closed month answers the statement written at its close "
        "(closed: true); the current month (or one not closed yet) is computed from the "
        "journal now. Each line lists the journal entries it adds up. Operator finance "
        "staff name the provider with organization=.",
        tags=["statements"],
        parameters=[
            OpenApiParameter(
                "period", OpenApiTypes.STR, OpenApiParameter.PATH, description="YYYY-MM"
            ),
            OpenApiParameter(
                "organization", OpenApiTypes.INT, description="operator finance: the provider"
            ),
        ],
        responses={
            200: inline_serializer(
                "ProviderStatementDocument",
                {
                    "organization": serializers.IntegerField(),
                    "period": serializers.CharField(),
                    "closed": serializers.BooleanField(),
                    "generated_at": serializers.DateTimeField(),
                    "statement": serializers.DictField(
                        help_text="lines (node, gpu_model, gpu_seconds, gpu_hours, gross, "
                        "platform_fee, net_payable, entries), payouts and totals"
                    ),
                },
            ),
            **error_responses(400, 401, 403, 404, 429),
        },
    )
    def get(self, request: Request, period: str) -> Response:
        caller = get_caller(request)
        month = _period(period)
        now = timezone.now()
        if month > now.date():
            raise InvalidInput(f"{period} has not begun yet", details={"parameter": "period"})
        wanted = query_id(request, "organization") or caller.organization.pk
        provider = selectors.organization_for_caller(caller=caller, organization_id=wanted)
        if not provider.is_provider:
            raise NotFound(
                f"{provider.name} is not a provider", details={"organization": provider.pk}
            )
        found = selectors.statement_for_period(
            provider=provider, period=month, now=now, currency=settings.TANDEM_CURRENCY
        )
        return Response(
            {
                "organization": found.organization_id,
                "period": f"{found.period:%Y-%m}",
                "closed": found.closed,
                "generated_at": found.generated_at,
                "statement": found.document,
            }
        )
