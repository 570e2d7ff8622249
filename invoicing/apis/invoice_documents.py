"""An invoice's document, as HTML or PDF."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.schema import error_responses
from core.tenancy import get_caller
from invoicing import documents, selectors
from invoicing.apis.common import _INVOICE_ID
from invoicing.models import Invoice


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
