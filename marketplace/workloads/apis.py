"""The OpenAI- and Together-compatible API under ``/v1/``.

One view per operation: parse the request in the client's vocabulary, call one
selector or service, answer in the client's shape. Authentication is the usual
``Authorization: Bearer <Tandem API key>`` (what both official clients send);
errors come in OpenAI's shape (marketplace.workloads.errors), which Together's
client reads too.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
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

from core.converters import INT_MAX, parse_whole_number
from core.errors import ApplicationError
from core.idempotency import idempotent
from core.parsers import JSONParser
from core.permissions import IsBuyerMember, IsBuyerOperatorForWrites
from core.ports import GenerationRequest
from core.schema import openai_error_responses
from core.tenancy import get_caller
from marketplace.workloads import checkpoints, gateway, inference, inputs, jobs, selectors, shapes
from marketplace.workloads import files as workload_files
from marketplace.workloads import ports as external
from marketplace.workloads.completions import (
    EMBEDDING_INPUTS_MAX,
    completion_object,
    embedding_object,
    tool_calls_for,
    usage_object,
)
from marketplace.workloads.errors import (
    invalid,
    not_found,
    openai_error_body,
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


def _list(items: list[dict[str, Any]], *, has_more: bool = False) -> dict[str, Any]:
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
_JSON_OK = OpenApiResponse(description="the object in the client's shape (OpenAI or Together)")
_UPLOAD_REDIRECT = OpenApiResponse(
    description="Together's upload: a signed URL to PUT the bytes to (Location), "
    "the new file's id in X-Together-File-Id"
)
_COMPLETION_RESPONSES: dict[Any, Any] = {
    (200, "application/json"): OpenApiResponse(
        response=OpenApiTypes.OBJECT, description="the completion in OpenAI's shape"
    ),
    (200, "text/event-stream"): OpenApiResponse(
        response=OpenApiTypes.STR, description='"stream": true: the chunks as server-sent events'
    ),
    **openai_error_responses(400, 401, 402, 403, 404, 413, 429, 503),
}


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
        responses={200: _JSON_OK, **openai_error_responses(400, 401, 403, 429)},
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
        return Response(_list([shapes.file_object(f) for f in page.items], has_more=page.has_more))


class FileCreateApi(V1Api):
    """OpenAI: multipart ``purpose`` and ``file``, answered with the file. Together:
    ``purpose, file_name, file_type, checksum``, answered with a 302 to a signed
    upload URL and the new id in ``X-Together-File-Id``."""

    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(
        summary="Upload a file",
        request=None,
        responses={
            200: _JSON_OK,
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
        responses={200: _JSON_OK, **openai_error_responses(400, 404, 409, 413)},
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
        responses={200: _JSON_OK, **openai_error_responses(401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, file_id: str) -> Response:
        file = selectors.file_get(organization=get_caller(request).organization, file_id=file_id)
        file = workload_files.file_preprocess(file=file)
        return Response(shapes.file_object(file))


class FileDetailApi(V1Api):
    @extend_schema(
        summary="Retrieve a file",
        responses={200: _JSON_OK, **openai_error_responses(401, 403, 404, 429)},
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


# --- fine-tune jobs: OpenAI -----------------------------------------------------------


class OpenAIJobListApi(V1Api):
    @extend_schema(
        operation_id="v1_fine_tuning_jobs_list",
        summary="List fine-tuning jobs (OpenAI)",
        responses={200: _JSON_OK, **openai_error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        metadata = {
            key[len("metadata[") : -1]: value
            for key, value in request.query_params.items()
            if key.startswith("metadata[") and key.endswith("]") and isinstance(value, str)
        }
        jobs = selectors.job_list(organization=get_caller(request).organization, metadata=metadata)
        page = selectors.page_after(
            jobs,
            after=request.query_params.get("after"),
            limit_raw=request.query_params.get("limit"),
        )
        return Response(
            _list([shapes.openai_job(job) for job in page.items], has_more=page.has_more)
        )


class OpenAIJobCreateApi(V1Api):
    @extend_schema(
        summary="Create a fine-tuning job (OpenAI)",
        request=None,
        responses={
            200: _JSON_OK,
            **openai_error_responses(400, 401, 402, 403, 404, 409, 413, 422, 429),
        },
    )
    @idempotent(required=False)
    def post(self, request: Request) -> Response:
        job = jobs.finetune_job_create(
            organization=get_caller(request).organization,
            request=shapes.openai_job_request(inputs.body_object(request.data)),
        )
        return Response(shapes.openai_job(job))


class OpenAIJobDetailApi(V1Api):
    @extend_schema(
        summary="Retrieve a fine-tuning job (OpenAI)",
        responses={200: _JSON_OK, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        return Response(shapes.openai_job(job))


class OpenAIJobCancelApi(V1Api):
    @extend_schema(
        summary="Cancel a fine-tuning job (OpenAI)",
        request=None,
        responses={200: _JSON_OK, **openai_error_responses(401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        job = jobs.finetune_job_cancel(job=job)
        return Response(shapes.openai_job(job))


class OpenAIJobEventsApi(V1Api):
    @extend_schema(
        summary="List a fine-tuning job's events (OpenAI)",
        responses={200: _JSON_OK, **openai_error_responses(400, 401, 403, 404, 429)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        page = selectors.page_after(
            selectors.job_events(job=job),
            after=request.query_params.get("after"),
            limit_raw=request.query_params.get("limit"),
        )
        return Response(_list([shapes.openai_event(e) for e in page.items], has_more=page.has_more))


class OpenAIJobCheckpointsApi(V1Api):
    @extend_schema(
        summary="List a fine-tuning job's checkpoints (OpenAI)",
        responses={200: _JSON_OK, **openai_error_responses(400, 401, 403, 404, 429)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        page = selectors.page_after(
            selectors.job_checkpoints(job=job),
            after=request.query_params.get("after"),
            limit_raw=request.query_params.get("limit") or "10",
        )
        return Response(
            _list([shapes.openai_checkpoint(c, job) for c in page.items], has_more=page.has_more)
        )


# --- fine-tune jobs: Together ----------------------------------------------------------


class TogetherJobListApi(V1Api):
    @extend_schema(
        operation_id="v1_fine_tunes_list",
        summary="List fine-tunes (Together)",
        responses={200: _JSON_OK, **openai_error_responses(401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        jobs = selectors.job_list(organization=get_caller(request).organization)
        return Response({"data": [shapes.together_job(job) for job in jobs[:1000]]})


class TogetherJobCreateApi(V1Api):
    @extend_schema(
        summary="Create a fine-tune (Together)",
        request=None,
        responses={
            200: _JSON_OK,
            **openai_error_responses(400, 401, 402, 403, 404, 409, 413, 422, 429),
        },
    )
    @idempotent(required=False)
    def post(self, request: Request) -> Response:
        job = jobs.finetune_job_create(
            organization=get_caller(request).organization,
            request=shapes.together_job_request(inputs.body_object(request.data)),
        )
        return Response(shapes.together_job(job, with_events=True))


class TogetherJobDetailApi(V1Api):
    @extend_schema(
        summary="Retrieve a fine-tune (Together)",
        responses={200: _JSON_OK, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        return Response(shapes.together_job(job, with_events=True))


class TogetherJobCancelApi(V1Api):
    @extend_schema(
        summary="Cancel a fine-tune (Together)",
        request=None,
        responses={200: _JSON_OK, **openai_error_responses(401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        job = jobs.finetune_job_cancel(job=job)
        return Response(shapes.together_job(job))


class TogetherJobEventsApi(V1Api):
    @extend_schema(
        summary="List a fine-tune's events (Together)",
        responses={200: _JSON_OK, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        events = job.events.order_by("pk")
        return Response({"data": [shapes.together_event(e) for e in events]})


class TogetherJobCheckpointsApi(V1Api):
    @extend_schema(
        summary="List a fine-tune's checkpoints (Together)",
        responses={200: _JSON_OK, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        checkpoints = selectors.job_checkpoints(job=job)
        return Response({"data": [shapes.together_checkpoint(c, job) for c in checkpoints]})


def _tar_stream(root: Path, arcname: str) -> Iterator[bytes]:
    """A gzipped tar of ``root`` produced piece by piece, never whole in memory."""

    class _Sink(io.RawIOBase):
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.parts.append(bytes(data))
            return len(data)

    sink = _Sink()
    with tarfile.open(fileobj=sink, mode="w|gz") as archive:  # type: ignore[call-overload]
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            name = f"{arcname}/{path.name if root.is_file() else path.relative_to(root)}"
            archive.add(str(path), arcname=name, recursive=False)
            yield b"".join(sink.parts)
            sink.parts.clear()
    yield b"".join(sink.parts)


class TogetherDownloadApi(V1DownloadApi):
    """``GET /v1/finetune/download?ft_id=&checkpoint=adapter|merged&checkpoint_step=``:
    the adapter or merged weights of a checkpoint (the final one by default) as a
    .tar.gz."""

    @extend_schema(
        summary="Download fine-tuned weights (Together)",
        responses={
            (200, "application/gzip"): OpenApiTypes.BINARY,
            **openai_error_responses(400, 401, 403, 404, 429),
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        organization = get_caller(request).organization
        job_id = request.query_params.get("ft_id") or ""
        if not job_id:
            raise invalid("ft_id is required", param="ft_id")
        job = selectors.job_get(organization=organization, job_id=job_id)
        kind = request.query_params.get("checkpoint") or "merged"
        if kind not in ("merged", "adapter", "model_output_path", "default"):
            raise invalid("checkpoint must be merged or adapter", param="checkpoint")
        raw_step = request.query_params.get("checkpoint_step") or "0"
        step = parse_whole_number(raw_step, low=0, high=INT_MAX)  # a 32-bit column
        if step is None:
            raise invalid(
                f"checkpoint_step must be a whole number from 0 to {INT_MAX}",
                param="checkpoint_step",
            )
        checkpoints = selectors.job_checkpoints(job=job)
        checkpoint = (
            checkpoints.filter(step=step).first()
            if step
            else (checkpoints.filter(is_final=True).first() if job.status == "succeeded" else None)
        )
        if checkpoint is None:
            raise not_found(
                "checkpoint",
                f"{job_id}:{step}" if step else f"{job_id} (final)",
                param="checkpoint_step",
            )
        path = (
            checkpoint.adapter_path
            if kind == "adapter"
            else (checkpoint.merged_path or checkpoint.adapter_path)
        )
        if not path or not Path(path).exists():
            raise not_found(
                "checkpoint", f"{job_id}:{checkpoint.step} ({kind})", param="checkpoint"
            )
        flavour = "adapter" if path == checkpoint.adapter_path else "merged"
        name = f"{job.public_id}-step{checkpoint.step}-{flavour}"
        response = StreamingHttpResponse(
            _tar_stream(Path(path), name), content_type="application/gzip"
        )
        response["Content-Disposition"] = f'attachment; filename="{name}.tar.gz"'
        return response


class TogetherEstimatePriceApi(V1Api):
    permission_classes = [IsBuyerMember]  # a POST that only reads: any buyer role

    @extend_schema(
        summary="Estimate a fine-tune's price (Together)",
        request=None,
        responses={200: _JSON_OK, **openai_error_responses(400, 401, 403, 404, 413, 429)},
    )
    def post(self, request: Request) -> Response:
        body = inputs.body_object(request.data)
        job_request = shapes.together_job_request(
            {"n_epochs": 1, "n_evals": 0, **body, "batch_size": "max"}
        )
        quote = jobs.finetune_quote(
            organization=get_caller(request).organization, request=job_request
        )
        return Response(
            {
                "estimation_available": True,
                "allowed_to_proceed": quote.allowed,
                "estimated_total_price": quote.total_micros / 1_000_000,
                "estimated_total_price_micros": quote.total_micros,
                "currency": quote.currency,
                "estimated_train_token_count": quote.training_tokens
                * quote.hyperparameters["n_epochs"],
                "estimated_eval_token_count": quote.validation_tokens
                * quote.hyperparameters["n_evals"],
                "user_limit": quote.available_micros / 1_000_000,
            }
        )


class TogetherModelLimitsApi(V1Api):
    @extend_schema(
        summary="Fine-tuning limits of a model (Together)",
        responses={200: _JSON_OK, **openai_error_responses(400, 401, 403, 404, 429)},
    )
    def get(self, request: Request) -> Response:
        name = request.query_params.get("model_name") or ""
        if not name:
            raise invalid("model_name is required", param="model_name")
        card = external.base_model(name)
        if card is None:
            # Asked for a job (or checkpoint) to start from: its base model's limits.
            source = checkpoints.source_job(
                organization=get_caller(request).organization, name=name
            )
            card = external.base_model(source.model) if source is not None else None
        if card is None:
            raise not_found("model", name, param="model_name")
        limits = jobs.LIMITS
        batch = {"min_batch_size": 1, "max_batch_size": limits["max_batch_size"]}
        return Response(
            {
                "model_name": card.name,
                "default_gradient_accumulation_steps": 1,
                "max_num_epochs": limits["max_epochs"],
                "max_num_checkpoints": limits["max_checkpoints"],
                "max_num_evals": limits["max_evals"],
                "min_learning_rate": limits["min_learning_rate"],
                "max_learning_rate": limits["max_learning_rate"],
                "max_seq_length_sft": card.context_length,
                "max_seq_length_dpo": card.context_length,
                "min_max_seq_length": 16,
                "merge_output_lora": True,
                "supports_full_training": card.supports_full_training,
                "supports_reasoning": False,
                "supports_tools": False,
                "supports_vision": False,
                "lora_training": {
                    **batch,
                    "max_batch_size_dpo": limits["max_batch_size"],
                    "default_rank": 8,
                    "max_rank": limits["max_lora_rank"],
                    "target_modules": ["all-linear"],
                },
                "full_training": {**batch, "max_batch_size_dpo": limits["max_batch_size"]}
                if card.supports_full_training
                else None,
            }
        )


# --- inference -----------------------------------------------------------------------------


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _together_caller(request: Request) -> bool:
    """Whether Together's official client sent the request (its User-Agent is
    ``Together/Python <version>``). Its types differ from OpenAI's where the two APIs
    differ: usage rides on a stream's last chunk (it sends no ``stream_options``), a
    text completion is ``text.completion`` (a chunk ``completion.chunk``), and a
    stream's chunks each carry the token sampled (``token``)."""
    return request.headers.get("User-Agent", "").startswith("Together/")


class _CompletionApi(V1Api):
    chat: bool = True

    def post(self, request: Request) -> Any:
        organization = get_caller(request).organization
        # Text to generate from may hold any character; what is looked up may not.
        body = inputs.body_object(request.data, nul_ok=True)
        model_name = inputs.text(body.get("model"), param="model")
        if not model_name:
            raise invalid("model is required", param="model", code="missing_model")
        generation = inputs.generation_request(body, chat=self.chat)
        stream = body.get("stream") is True
        options = body.get("stream_options") or {}
        together = _together_caller(request)
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        served = inference.model_resolve(organization=organization, name=model_name)
        request_id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        chunks = gateway.inference_stream(
            organization=organization,
            served=served,
            request=generation,
            request_id=request_id,
            stream=stream,
            tokens=together,
        )
        if stream:
            response = StreamingHttpResponse(
                self._stream(
                    chunks,
                    request_id,
                    created,
                    served.name,
                    include_usage=include_usage,
                    together=together,
                    generation=generation,
                ),
                content_type="text/event-stream",
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        return Response(
            completion_object(
                chunks,
                request_id=request_id,
                created=created,
                model=served.name,
                chat=self.chat,
                together=together,
                generation=generation,
            )
        )

    def _stream(
        self,
        chunks: Iterator[Any],
        request_id: str,
        created: int,
        model: str,
        *,
        include_usage: bool,
        together: bool,
        generation: GenerationRequest,
    ) -> Iterator[bytes]:
        """Server-sent events in the caller's client's shape. Chat: every delta
        carries ``role`` (Together's type requires it; OpenAI's allows it). Usage: on
        the chunk that finishes for Together's client; for OpenAI's, with
        ``stream_options.include_usage``, a last chunk with no choices. A request that
        may answer with a tool call is held until it ends (a call is only known
        whole), then sent as one delta: ``tool_calls`` or ``content``. Together's
        client gets one chunk per sampled token, each with its ``token`` (id, text,
        special, logprob; a chat delta also its ``token_id``), and no role-only
        first chunk (it would carry none)."""
        if self.chat:
            kind = "chat.completion.chunk"
        else:
            kind = "completion.chunk" if together else "text_completion"
        base = {"id": request_id, "object": kind, "created": created, "model": model}
        usage = (0, 0)
        hold = self.chat and generation.tools is not None and generation.tool_choice != "none"
        held: list[str] = []
        if self.chat and not together:
            first = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
            }
            yield _sse({**base, "choices": [first]})
        try:
            for chunk in chunks:
                finish = chunk.finish_reason
                text = chunk.text
                if finish is not None:
                    usage = (chunk.prompt_tokens or 0, chunk.completion_tokens or 0)
                extra: dict[str, Any] = {}
                if include_usage:
                    extra["usage"] = None
                if together and finish is not None:
                    extra["usage"] = usage_object(*usage)
                token = chunk.token
                if together and token is not None:
                    extra["token"] = {
                        "id": token.id,
                        "text": token.text,
                        "logprob": token.logprob,
                        "special": token.special,
                    }
                if self.chat:
                    delta: dict[str, Any] = {"role": "assistant"}
                    if together and token is not None:
                        delta["token_id"] = token.id
                    if hold:
                        held.append(text)
                        text = "" if finish is None else "".join(held)
                        calls = tool_calls_for(text, finish, generation) if finish else None
                        if calls is not None:
                            delta["tool_calls"] = [
                                {"index": n, **call} for n, call in enumerate(calls)
                            ]
                            finish, text = "tool_calls", ""
                    if text:
                        delta["content"] = text
                    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
                else:
                    choice = {
                        "index": 0,
                        "text": text,
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                    if together:
                        extra["finish_reason"] = finish
                if text or finish is not None or "token" in extra:
                    yield _sse({**base, "choices": [choice], **extra})
        except ApplicationError as exc:
            # The 200 is out: the error goes as an event in OpenAI's shape, which both
            # clients raise, and the stream ends.
            yield _sse(openai_error_body(exc))
            return
        if include_usage and not together:
            # OpenAI's last chunk: no choices, the request's exact usage.
            yield _sse({**base, "choices": [], "usage": usage_object(*usage)})
        yield b"data: [DONE]\n\n"


class ChatCompletionApi(_CompletionApi):
    chat = True

    @extend_schema(
        summary="Chat completion (OpenAI/Together)", request=None, responses=_COMPLETION_RESPONSES
    )
    def post(self, request: Request) -> Any:
        return super().post(request)


class CompletionApi(_CompletionApi):
    chat = False

    @extend_schema(
        summary="Text completion (OpenAI/Together)", request=None, responses=_COMPLETION_RESPONSES
    )
    def post(self, request: Request) -> Any:
        return super().post(request)


class EmbeddingsApi(V1Api):
    """``POST /v1/embeddings``: one L2-normalized vector per input from the served
    model (its last hidden states mean-pooled over the input's tokens), billed as
    the deployment's prompt tokens."""

    @extend_schema(
        summary="Create embeddings (OpenAI/Together)",
        request=None,
        responses={
            200: OpenApiResponse(
                response=OpenApiTypes.OBJECT, description="the vectors in OpenAI's list shape"
            ),
            **openai_error_responses(400, 401, 402, 403, 404, 413, 429, 503),
        },
    )
    def post(self, request: Request) -> Response:
        organization = get_caller(request).organization
        body = inputs.body_object(request.data, nul_ok=True)
        model_name = inputs.text(body.get("model"), param="model")
        if not model_name:
            raise invalid("model is required", param="model", code="missing_model")
        texts, encoding = inputs.embedding_request(body, max_inputs=EMBEDDING_INPUTS_MAX)
        served = inference.model_resolve(organization=organization, name=model_name)
        result = gateway.embeddings_create(
            organization=organization,
            served=served,
            texts=texts,
            request_id=f"emb-{uuid.uuid4().hex}",
        )
        return Response(embedding_object(result, encoding=encoding, model=served.name))


class ModelListApi(V1Api):
    """Base models on the market and the caller's own fine-tuned models."""

    @extend_schema(
        operation_id="v1_models_list",
        summary="List models",
        responses={200: _JSON_OK, **openai_error_responses(401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        organization = get_caller(request).organization
        data = [
            {
                "id": card.name,
                "object": "model",
                "created": 0,
                "owned_by": "tandem",
                "type": "chat",
                "context_length": card.context_length,
            }
            for card in external.base_models()
        ]
        for job in selectors.fine_tuned_models(organization=organization):
            data.append(
                {
                    "id": job.fine_tuned_model,
                    "object": "model",
                    "created": shapes.ts(job.finished_at) or 0,
                    "owned_by": f"org-{organization.pk}",
                    "type": "chat",
                    "root": job.model,
                    "parent": job.model,
                }
            )
        return Response({"object": "list", "data": data})


class ModelDetailApi(V1Api):
    @extend_schema(
        summary="Retrieve a model",
        responses={200: _JSON_OK, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, model: str) -> Response:
        served = inference.model_resolve(organization=get_caller(request).organization, name=model)
        return Response(
            {
                "id": served.name,
                "object": "model",
                "created": shapes.ts(served.created_at) or 0,
                "owned_by": f"org-{served.organization.pk}" if served.organization else "tandem",
            }
        )
