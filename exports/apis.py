"""HTTP endpoints of the finance exports and reports under /api/v1/finance/.

Only the operator's finance staff reach them (``IsPlatformFinance``): buyers,
providers and a buyer's own finance staff get 403, a caller without a key 401.

- ``POST exports/`` records an export (``Idempotency-Key`` required) and a worker
  fills it in; ``GET exports/{id}`` shows its progress; ``GET exports/{id}/download``
  sends the file once it has succeeded; ``GET exports/`` lists the newest.
- ``GET reconciliation`` reconciles the ledger with invoices, payments and payouts.
- ``GET reports/monthly?period=YYYY-MM`` is the month's report as HTML, the revenue
  chart embedded; ``GET reports/revenue-chart.png`` is the chart alone.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import actor_for, query_currency
from core.converters import query_int
from core.errors import InvalidInput
from core.idempotency import idempotent
from core.money import CURRENCIES, Money
from core.pagination import page_serializer, paginated_response
from core.permissions import IsPlatformFinance
from core.schema import error_responses
from core.tenancy import get_caller
from exports import services
from exports.models import FinanceExport
from invoicing.selectors import parse_period

# --- serializers ---------------------------------------------------------------------


class ExportInputSerializer(serializers.Serializer):
    """Documents the body; the service checks it (errors name the field)."""

    # Plain text in the schema, the values in the help: drf-spectacular names enums
    # after fields, and "kind", "format" and "status" mean other sets elsewhere.
    kind = serializers.CharField(help_text=", ".join(services.KINDS))
    format = serializers.CharField(help_text=", ".join(services.FORMATS))
    params = serializers.DictField(
        required=False,
        help_text="period (YYYY-MM), as_of (a date, or a date and time with a zone), "
        "currency, organization (usage_detail): see each kind",
    )


class ExportSerializer(serializers.ModelSerializer):
    kind = serializers.CharField(read_only=True, help_text=", ".join(services.KINDS))
    format = serializers.CharField(read_only=True, help_text=", ".join(services.FORMATS))
    status = serializers.CharField(
        read_only=True, help_text=", ".join(c.value for c in FinanceExport.Status)
    )
    progress = serializers.SerializerMethodField(help_text="0 to 1; null while not known")
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = FinanceExport
        fields = [
            "id",
            "kind",
            "format",
            "params",
            "status",
            "rows_written",
            "rows_total",
            "progress",
            "file_name",
            "size_bytes",
            "sha256",
            "error",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "download_url",
        ]
        read_only_fields = fields

    def get_progress(self, export: FinanceExport) -> float | None:
        if export.status == FinanceExport.Status.SUCCEEDED:
            return 1.0
        if not export.rows_total:
            return None
        return round(min(export.rows_written / export.rows_total, 1.0), 4)

    def get_download_url(self, export: FinanceExport) -> str | None:
        if export.status != FinanceExport.Status.SUCCEEDED:
            return None
        return f"/api/v1/finance/exports/{export.pk}/download"


class DifferenceSerializer(serializers.Serializer):
    section = serializers.CharField()
    reference = serializers.CharField()
    cause = serializers.CharField()
    explained = serializers.BooleanField()
    ledger_micros = serializers.IntegerField()
    documents_micros = serializers.IntegerField()
    amount_micros = serializers.IntegerField(help_text="ledger minus documents")


class SectionSerializer(serializers.Serializer):
    name = serializers.CharField()
    ledger_micros = serializers.IntegerField()
    documents_micros = serializers.IntegerField()
    difference_micros = serializers.IntegerField()
    explained_micros = serializers.IntegerField()
    unexplained_micros = serializers.IntegerField()
    differences = DifferenceSerializer(many=True)


class ReconciliationSerializer(serializers.Serializer):
    currency = serializers.CharField()
    position = serializers.IntegerField(help_text="the newest event the report reflects")
    generated_at = serializers.DateTimeField()
    unexplained_micros = serializers.IntegerField(help_text="0 on a correct system")
    unexplained = serializers.SerializerMethodField()
    sections = SectionSerializer(many=True)

    def get_unexplained(self, value: services.Reconciliation) -> str:
        return Money(value.unexplained_micros, value.currency).format()


# --- query parameters ----------------------------------------------------------------


def _period(request: Request, name: str, *, required: bool) -> date | None:
    raw = request.query_params.get(name)
    if raw is None:
        if required:
            raise InvalidInput(f"{name} is required (YYYY-MM)", details={"parameter": name})
        return None
    try:
        return parse_period(raw)
    except InvalidInput as error:
        raise InvalidInput(
            error.message.replace("period", name, 1), details={"parameter": name}
        ) from None


def _months(request: Request) -> int:
    return query_int(request, "months", low=1, high=60, default=12)


_EXPORT_ID = OpenApiParameter("export_id", OpenApiTypes.INT, OpenApiParameter.PATH)


# --- views ----------------------------------------------------------------------------


class ExportListCreateApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="finance_exports_list",
        summary="The newest finance exports (operator finance)",
        tags=["finance"],
        responses={200: page_serializer(ExportSerializer), **error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        return paginated_response(
            queryset=FinanceExport.objects.all(),
            serializer_class=ExportSerializer,
            request=request,
            view=self,
        )

    @extend_schema(
        operation_id="finance_exports_create",
        summary="Start a finance export (operator finance)",
        description="Kinds: invoice_register, revenue, provider_earnings, ar_aging, "
        "trial_balance, deferred_revenue, usage_detail; formats: csv, parquet, xlsx. "
        "A worker writes the file in chunks; poll GET exports/{id} for progress.",
        tags=["finance"],
        request=ExportInputSerializer,
        responses={202: ExportSerializer, **error_responses(400, 401, 403, 409, 422, 429)},
    )
    @idempotent(required=True)
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object", details={"field": "body"})
        params: Any = body.get("params")
        export = services.export_create(
            kind=body.get("kind"),
            format=body.get("format"),
            params={} if params is None else params,
            requested_by=actor_for(get_caller(request)),
        )
        return Response(ExportSerializer(export).data, status=status.HTTP_202_ACCEPTED)


class ExportDetailApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="finance_exports_retrieve",
        summary="One finance export and its progress (operator finance)",
        tags=["finance"],
        parameters=[_EXPORT_ID],
        responses={200: ExportSerializer, **error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, export_id: int) -> Response:
        return Response(ExportSerializer(services.export_get(export_id=export_id)).data)


class ExportDownloadApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="finance_exports_download",
        summary="Download a finished finance export (operator finance)",
        tags=["finance"],
        parameters=[_EXPORT_ID],
        responses={
            (200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY),
            **error_responses(401, 403, 404, 409, 429),
        },
    )
    def get(self, request: Request, export_id: int) -> FileResponse:
        export = services.export_get(export_id=export_id)
        path = services.export_file(export=export)
        response = FileResponse(
            path.open("rb"),
            as_attachment=True,
            filename=export.file_name,
            content_type=services.CONTENT_TYPES[export.format],
        )
        response["X-Content-SHA256"] = export.sha256
        return response


class ReconciliationApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="finance_reconciliation_retrieve",
        summary="Reconcile the ledger with invoices, payments and payouts (operator finance)",
        description="Every difference with its cause; unexplained_micros is 0 on a correct system.",
        tags=["finance"],
        parameters=[OpenApiParameter("currency", OpenApiTypes.STR, enum=sorted(CURRENCIES))],
        responses={200: ReconciliationSerializer, **error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        result = services.reconciliation_compute(currency=query_currency(request))
        return Response(ReconciliationSerializer(result).data)


class MonthlyReportApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="finance_report_monthly",
        summary="The month's finance report as HTML, revenue chart embedded (operator finance)",
        tags=["finance"],
        parameters=[
            OpenApiParameter("period", OpenApiTypes.STR, required=True, description="YYYY-MM"),
            OpenApiParameter("currency", OpenApiTypes.STR, enum=sorted(CURRENCIES)),
        ],
        responses={(200, "text/html"): OpenApiTypes.STR, **error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> HttpResponse:
        period = _period(request, "period", required=True)
        assert period is not None
        html = services.monthly_report_html(period=period, currency=query_currency(request))
        return HttpResponse(html, content_type="text/html; charset=utf-8")


class RevenueChartApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="finance_report_revenue_chart",
        summary="Monthly revenue by product as a PNG chart (operator finance)",
        tags=["finance"],
        parameters=[
            OpenApiParameter("until", OpenApiTypes.STR, description="the last month, YYYY-MM"),
            OpenApiParameter("months", OpenApiTypes.INT, description="1 to 60; 12 by default"),
            OpenApiParameter("currency", OpenApiTypes.STR, enum=sorted(CURRENCIES)),
        ],
        responses={
            (200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY),
            **error_responses(400, 401, 403, 429),
        },
    )
    def get(self, request: Request) -> HttpResponse:
        png = services.revenue_chart_png(
            currency=query_currency(request) or settings.TANDEM_CURRENCY,
            months=_months(request),
            until=_period(request, "until", required=False),
        )
        response = HttpResponse(png, content_type="image/png")
        response["Content-Disposition"] = 'inline; filename="revenue.png"'
        return response
