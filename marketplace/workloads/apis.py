"""The OpenAI- and Together-compatible API under ``/v1/``.

One view per operation: parse the request in the client's vocabulary, call one
selector or service, answer in the client's shape. Authentication is the usual
``Authorization: Bearer <Tandem API key>`` (what both official clients send);
errors come in OpenAI's shape (marketplace.workloads.errors), which Together's
client reads too.

This module holds what every route shares (``V1Api``, downloads, list bodies) and
the files routes; the fine-tune job routes are job_apis.py, inference and models
inference_apis.py, batches batch_apis.py, deletions deletion_apis.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from django.core import signing
from django.http import HttpResponseRedirect, StreamingHttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.parsers import JSONParser
from core.permissions import IsBuyerOperatorForWrites
from core.schema import openai_error_responses
from core.tenancy import get_caller
from marketplace.workloads import files as workload_files
from marketplace.workloads import inputs, selectors, shapes
from marketplace.workloads.errors import (
    invalid,
    not_found,
    openai_exception_handler,
)
from marketplace.workloads.storage import file_storage

UPLOAD_SALT = "workloads.file-upload"
UPLOAD_URL_MAX_AGE = 3600
CHUNK = 1024 * 1024


class V1Api(APIView):
    """Base of every /v1/ view: the OpenAI error shape, buyers' keys (any role reads;
    admins and members start work, finance keys do not)."""

    permission_classes = [IsBuyerOperatorForWrites]

    def get_exception_handler(self):  # type: ignore[no-untyped-def]
        return openai_exception_handler


class _BytesNegotiation(DefaultContentNegotiation):
    """A download answers its bytes whatever the Accept header names: the official
    clients ask for ``application/octet-stream`` (Together's weights) and
    ``application/binary`` (both clients' file content), a browser for ``*/*``. RFC
    9110 (12.5.1) lets a server disregard Accept rather than answer 406, and the bytes
    are the only form the content has. An error still goes out as JSON, the client's
    error shape, through the view's one renderer."""

    def select_renderer(
        self, request: Any, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class V1DownloadApi(V1Api):
    """Base of the /v1/ views that stream bytes (a StreamingHttpResponse, which no
    renderer touches): no 406 for the clients' binary Accept headers."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = _BytesNegotiation


def list_body(items: list[dict[str, Any]], *, has_more: bool = False) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items and "id" in items[0] else None,
        "last_id": items[-1]["id"] if items and "id" in items[-1] else None,
    }


# What the schema says of the answers: each status the view gives, errors in OpenAI's
# shape. The success bodies are the clients' own shapes (OpenAI's and Together's
# references), so only the file deletion, which the OpenAI client parses, is spelled
# out here.
JSON_OK = OpenApiResponse(description="the object in the client's shape (OpenAI or Together)")
_UPLOAD_REDIRECT = OpenApiResponse(
    description="Together's upload: a signed URL to PUT the bytes to (Location), "
    "the new file's id in X-Together-File-Id"
)


class FileDeletedSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["file"])
    deleted = serializers.BooleanField()


def _request_chunks(request: Request) -> Iterator[bytes]:
    raw = request._request  # the Django request: its body is read as a stream
    while chunk := raw.read(CHUNK):
        yield chunk


# --- files -----------------------------------------------------------------------


class FileListApi(V1Api):
    @extend_schema(
        operation_id="v1_files_list",
        summary="List files (OpenAI and Together)",
        responses={200: JSON_OK, **openai_error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        files = selectors.file_list(
            organization=get_caller(request).organization,
            purpose=request.query_params.get("purpose") or None,
        )
        page = selectors.page_after(
            files,
            after=request.query_params.get("after"),
            limit_raw=request.query_params.get("limit") or "100",
        )
        return Response(
            list_body([shapes.file_object(f) for f in page.items], has_more=page.has_more)
        )


class FileCreateApi(V1Api):
    """OpenAI: multipart ``purpose`` and ``file``, answered with the file. Together:
    ``purpose, file_name, file_type, checksum``, answered with a 302 to a signed
    upload URL and the new id in ``X-Together-File-Id``."""

    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(
        summary="Upload a file",
        request=None,
        responses={
            200: JSON_OK,
            302: _UPLOAD_REDIRECT,
            **openai_error_responses(400, 401, 403, 409, 413, 429),
        },
    )
    def post(self, request: Request) -> Any:
        organization = get_caller(request).organization
        inputs.body_object(request.data)  # an object, every string valid Unicode
        # request.data itself (a QueryDict for multipart: .get gives one value)
        data: Any = request.data
        purpose = inputs.text(data.get("purpose"), param="purpose")
        upload = request.FILES.get("file")
        if upload is not None:
            file = workload_files.file_upload(
                organization=organization,
                purpose=purpose,
                filename=upload.name or "upload.jsonl",
                chunks=upload.chunks(CHUNK),
            )
            return Response(shapes.file_object(file))
        workload_files.file_purpose_check(purpose)
        file_name = inputs.text(data.get("file_name"), param="file_name")
        if not file_name:
            raise invalid("file is required (multipart form field 'file')", param="file")
        file = workload_files.file_reserve(
            organization=organization,
            purpose=purpose,
            filename=file_name,
            file_type=inputs.text(data.get("file_type"), param="file_type"),
            checksum=inputs.text(data.get("checksum"), param="checksum"),
        )
        token = signing.dumps({"file": file.public_id, "org": organization.pk}, salt=UPLOAD_SALT)
        url = request.build_absolute_uri(
            reverse("workloads:file-upload-content", kwargs={"file_id": file.public_id})
            + f"?token={token}"
        )
        response = HttpResponseRedirect(url)
        response["X-Together-File-Id"] = file.public_id
        return response


class FileUploadContentApi(V1Api):
    """The signed URL Together's client PUTs the bytes to. The signature (made when
    the upload was announced, valid for an hour) is the authority: the client's
    raw PUT carries no API key, exactly as to a presigned bucket URL."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []
    parser_classes: list[Any] = []

    @extend_schema(
        summary="Upload a file's bytes (signed URL)",
        request=None,
        responses={200: JSON_OK, **openai_error_responses(400, 404, 409, 413)},
    )
    def put(self, request: Request, file_id: str) -> Response:
        try:
            claims = signing.loads(
                request.query_params.get("token", ""), salt=UPLOAD_SALT, max_age=UPLOAD_URL_MAX_AGE
            )
        except signing.BadSignature:
            raise not_found("upload", file_id) from None
        if claims.get("file") != file_id:
            raise not_found("upload", file_id)
        from marketplace.workloads.models import File

        file = File.objects.filter(public_id=file_id, organization_id=claims["org"]).first()
        if file is None:
            raise not_found("upload", file_id)
        file = workload_files.file_receive(file=file, chunks=_request_chunks(request))
        return Response({"id": file.public_id, "bytes": file.bytes})


class FilePreprocessApi(V1Api):
    @extend_schema(
        summary="Check an uploaded dataset (Together)",
        request=None,
        responses={200: JSON_OK, **openai_error_responses(401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, file_id: str) -> Response:
        file = selectors.file_get(organization=get_caller(request).organization, file_id=file_id)
        file = workload_files.file_preprocess(file=file)
        return Response(shapes.file_object(file))


class FileDetailApi(V1Api):
    @extend_schema(
        summary="Retrieve a file",
        responses={200: JSON_OK, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, file_id: str) -> Response:
        file = selectors.file_get(organization=get_caller(request).organization, file_id=file_id)
        return Response(shapes.file_object(file))


class FileDeleteApi(V1Api):
    @extend_schema(
        summary="Delete a file",
        responses={200: FileDeletedSerializer, **openai_error_responses(401, 403, 404, 409, 429)},
    )
    def delete(self, request: Request, file_id: str) -> Response:
        file = selectors.file_get(organization=get_caller(request).organization, file_id=file_id)
        workload_files.file_delete(file=file)
        return Response({"id": file.public_id, "object": "file", "deleted": True})


class FileContentApi(V1DownloadApi):
    @extend_schema(
        summary="Download a file's content",
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            **openai_error_responses(401, 403, 404, 429),
        },
    )
    def get(self, request: Request, file_id: str) -> StreamingHttpResponse:
        file = selectors.file_get(organization=get_caller(request).organization, file_id=file_id)
        response = StreamingHttpResponse(
            file_storage().open_chunks(file.storage_key), content_type="application/octet-stream"
        )
        response["Content-Length"] = str(file.bytes)
        response["Content-Disposition"] = f'attachment; filename="{file.filename}"'
        return response
