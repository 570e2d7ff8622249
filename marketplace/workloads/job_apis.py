"""The fine-tune job routes of the OpenAI-compatible (``/v1/fine_tuning/jobs``) and
Together-compatible (``/v1/fine-tunes``, estimates, model limits, downloads)
surfaces: one view per operation over jobs.py and the selectors."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from core.converters import INT_MAX, parse_whole_number
from core.idempotency import idempotent
from core.permissions import IsBuyerMember
from core.schema import openai_error_responses
from core.tenancy import get_caller
from marketplace.workloads import checkpoints, inputs, jobs, selectors, shapes
from marketplace.workloads import ports as external
from marketplace.workloads.apis import JSON_OK, V1Api, V1DownloadApi, list_body
from marketplace.workloads.errors import (
    invalid,
    not_found,
)

# --- fine-tune jobs: OpenAI -----------------------------------------------------------


class OpenAIJobListApi(V1Api):
    @extend_schema(
        operation_id="v1_fine_tuning_jobs_list",
        summary="List fine-tuning jobs (OpenAI)",
        responses={200: JSON_OK, **openai_error_responses(400, 401, 403, 429)},
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
            list_body([shapes.openai_job(job) for job in page.items], has_more=page.has_more)
        )


class OpenAIJobCreateApi(V1Api):
    @extend_schema(
        summary="Create a fine-tuning job (OpenAI)",
        request=None,
        responses={
            200: JSON_OK,
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
        responses={200: JSON_OK, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        return Response(shapes.openai_job(job))


class OpenAIJobCancelApi(V1Api):
    @extend_schema(
        summary="Cancel a fine-tuning job (OpenAI)",
        request=None,
        responses={200: JSON_OK, **openai_error_responses(401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        job = jobs.finetune_job_cancel(job=job)
        return Response(shapes.openai_job(job))


class OpenAIJobEventsApi(V1Api):
    @extend_schema(
        summary="List a fine-tuning job's events (OpenAI)",
        responses={200: JSON_OK, **openai_error_responses(400, 401, 403, 404, 429)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        page = selectors.page_after(
            selectors.job_events(job=job),
            after=request.query_params.get("after"),
            limit_raw=request.query_params.get("limit"),
        )
        return Response(
            list_body([shapes.openai_event(e) for e in page.items], has_more=page.has_more)
        )


class OpenAIJobCheckpointsApi(V1Api):
    @extend_schema(
        summary="List a fine-tuning job's checkpoints (OpenAI)",
        responses={200: JSON_OK, **openai_error_responses(400, 401, 403, 404, 429)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        page = selectors.page_after(
            selectors.job_checkpoints(job=job),
            after=request.query_params.get("after"),
            limit_raw=request.query_params.get("limit") or "10",
        )
        return Response(
            list_body(
                [shapes.openai_checkpoint(c, job) for c in page.items], has_more=page.has_more
            )
        )


# --- fine-tune jobs: Together ----------------------------------------------------------


class TogetherJobListApi(V1Api):
    @extend_schema(
        operation_id="v1_fine_tunes_list",
        summary="List fine-tunes (Together)",
        responses={200: JSON_OK, **openai_error_responses(401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        jobs = selectors.job_list(organization=get_caller(request).organization)
        return Response({"data": [shapes.together_job(job) for job in jobs[:1000]]})


class TogetherJobCreateApi(V1Api):
    @extend_schema(
        summary="Create a fine-tune (Together)",
        request=None,
        responses={
            200: JSON_OK,
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
        responses={200: JSON_OK, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        return Response(shapes.together_job(job, with_events=True))


class TogetherJobCancelApi(V1Api):
    @extend_schema(
        summary="Cancel a fine-tune (Together)",
        request=None,
        responses={200: JSON_OK, **openai_error_responses(401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        job = jobs.finetune_job_cancel(job=job)
        return Response(shapes.together_job(job))


class TogetherJobEventsApi(V1Api):
    @extend_schema(
        summary="List a fine-tune's events (Together)",
        responses={200: JSON_OK, **openai_error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        events = job.events.order_by("pk")
        return Response({"data": [shapes.together_event(e) for e in events]})


class TogetherJobCheckpointsApi(V1Api):
    @extend_schema(
        summary="List a fine-tune's checkpoints (Together)",
        responses={200: JSON_OK, **openai_error_responses(401, 403, 404, 429)},
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
        responses={200: JSON_OK, **openai_error_responses(400, 401, 403, 404, 413, 429)},
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
        responses={200: JSON_OK, **openai_error_responses(400, 401, 403, 404, 429)},
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
