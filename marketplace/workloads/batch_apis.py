"""``/v1/batches``: OpenAI's Batch API (create from an uploaded ``purpose=batch``
file, retrieve, list with ``after``/``limit``, cancel), in the shapes of the
``openai`` client's ``Batch``. The output and error files download through
``/v1/files/{id}/content`` like any file. See marketplace/workloads/batches.py."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from core.idempotency import idempotent
from core.schema import openai_error_responses
from core.tenancy import get_caller
from marketplace.workloads import batches, inputs, selectors
from marketplace.workloads.apis import V1Api
from marketplace.workloads.errors import invalid
from marketplace.workloads.models import Batch
from marketplace.workloads.shapes import ts

_BATCH = OpenApiResponse(description="the batch, in the shape of OpenAI's Batch object")
_CREATE_FIELDS = frozenset({"input_file_id", "endpoint", "completion_window", "metadata"})


def batch_object(batch: Batch) -> dict[str, Any]:
    progress = selectors.batch_progress(batch=batch)
    return {
        "id": batch.public_id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "errors": batch.errors,
        "input_file_id": batch.input_file.public_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file.public_id if batch.output_file else None,
        "error_file_id": batch.error_file.public_id if batch.error_file else None,
        "created_at": ts(batch.created_at),
        "in_progress_at": ts(batch.in_progress_at),
        "expires_at": ts(batch.expires_at),
        "finalizing_at": ts(batch.finalizing_at),
        "completed_at": ts(batch.completed_at),
        "failed_at": ts(batch.failed_at),
        "expired_at": ts(batch.expired_at),
        "cancelling_at": ts(batch.cancelling_at),
        "cancelled_at": ts(batch.cancelled_at),
        "request_counts": {
            "total": progress.total,
            "completed": progress.completed,
            "failed": progress.failed,
        },
        "usage": {
            "input_tokens": progress.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": progress.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": progress.prompt_tokens + progress.completion_tokens,
        },
        "metadata": batch.metadata,
    }


class BatchListApi(V1Api):
    @extend_schema(
        operation_id="v1_batches_list",
        summary="List batches, newest first (OpenAI)",
        parameters=[
            OpenApiParameter("after", str, description="the last batch id of the page before"),
            OpenApiParameter("limit", int, description="1 to 100 (default 20)"),
        ],
        responses={200: _BATCH, **openai_error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        page = selectors.page_after(
            selectors.batch_list(organization=get_caller(request).organization),
            after=request.query_params.get("after"),
            limit_raw=request.query_params.get("limit"),
        )
        data = [batch_object(batch) for batch in page.items]
        return Response(
            {
                "object": "list",
                "data": data,
                "has_more": page.has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )


class BatchCreateApi(V1Api):
    @extend_schema(
        operation_id="v1_batches_create",
        summary="Create a batch from an uploaded file of requests (OpenAI)",
        request=None,
        responses={200: _BATCH, **openai_error_responses(400, 401, 403, 404, 429)},
    )
    @idempotent(required=False)
    def post(self, request: Request) -> Response:
        body = inputs.body_object(request.data)
        for name, value in body.items():
            if name in _CREATE_FIELDS or value is None:
                continue
            if name == "output_expires_after":
                raise invalid(
                    "output_expires_after is not supported: a batch's output files are kept "
                    "until you delete them",
                    param=name,
                    code="unsupported_parameter",
                )
            raise invalid(
                f"{name} is not a parameter of batches; remove it",
                param=name,
                code="unknown_parameter",
            )
        batch = batches.batch_create(
            organization=get_caller(request).organization,
            input_file_id=inputs.text(body.get("input_file_id"), param="input_file_id"),
            endpoint=inputs.text(body.get("endpoint"), param="endpoint"),
            completion_window=inputs.text(body.get("completion_window"), param="completion_window"),
            metadata=body.get("metadata"),
        )
        return Response(batch_object(batch))


class BatchDetailApi(V1Api):
    @extend_schema(
        operation_id="v1_batches_retrieve",
        summary="Retrieve a batch (OpenAI)",
        responses={200: _BATCH, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, batch_id: str) -> Response:
        organization = get_caller(request).organization
        return Response(
            batch_object(selectors.batch_get(organization=organization, batch_id=batch_id))
        )


class BatchCancelApi(V1Api):
    @extend_schema(
        operation_id="v1_batches_cancel",
        summary="Cancel a batch: pending requests stop, the output keeps what ran (OpenAI)",
        request=None,
        responses={200: _BATCH, **openai_error_responses(401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, batch_id: str) -> Response:
        organization = get_caller(request).organization
        batch = selectors.batch_get(organization=organization, batch_id=batch_id)
        batch = batches.batch_cancel(batch=batch)
        return Response(
            batch_object(selectors.batch_get(organization=organization, batch_id=batch.public_id))
        )
