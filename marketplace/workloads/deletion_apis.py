"""The /v1/ views that delete what a buyer fine-tuned and read a fine-tune's metrics
(Together's ``DELETE /v1/fine-tunes/{id}`` and ``GET …/metrics``, OpenAI's
``DELETE /v1/models/{model}``)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from core.schema import openai_error_responses
from core.tenancy import get_caller
from marketplace.workloads import deletion, metrics, selectors
from marketplace.workloads.apis import V1Api


class FineTuneDeletedSerializer(serializers.Serializer):
    message = serializers.CharField()


class ModelDeletedSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["model"])
    deleted = serializers.BooleanField()


class FineTuneMetricsSerializer(serializers.Serializer):
    metrics = serializers.ListField(child=serializers.DictField(child=serializers.FloatField()))


class TogetherJobDeleteApi(V1Api):
    @extend_schema(
        operation_id="v1_fine_tunes_delete",
        summary="Delete a finished fine-tune, its checkpoints and its model (Together)",
        responses={
            200: FineTuneDeletedSerializer,
            **openai_error_responses(401, 403, 404, 409, 429),
        },
    )
    def delete(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        deleted = deletion.finetune_job_delete(job=job)
        return Response({"message": f"fine-tune job {deleted} and its model were deleted"})


class TogetherJobMetricsApi(V1Api):
    @extend_schema(
        operation_id="v1_fine_tunes_metrics",
        summary="A fine-tune's training and evaluation metrics, by step (Together)",
        parameters=[
            OpenApiParameter("global_step_from", int),
            OpenApiParameter("global_step_to", int),
            OpenApiParameter("logged_at_from", str, description="ISO 8601 with a time zone"),
            OpenApiParameter("logged_at_to", str, description="ISO 8601 with a time zone"),
            OpenApiParameter("resolution", int, description="train rows sampled evenly"),
        ],
        responses={
            200: FineTuneMetricsSerializer,
            **openai_error_responses(400, 401, 403, 404, 429),
        },
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(organization=get_caller(request).organization, job_id=job_id)
        return Response({"metrics": metrics.job_metrics(job=job, query=request.query_params)})


class ModelDeleteApi(V1Api):
    @extend_schema(
        operation_id="v1_models_delete",
        summary="Delete one of your fine-tuned models (OpenAI); its job stays",
        responses={200: ModelDeletedSerializer, **openai_error_responses(401, 403, 404, 409, 429)},
    )
    def delete(self, request: Request, model: str) -> Response:
        name = deletion.finetune_model_delete(
            organization=get_caller(request).organization, name=model
        )
        return Response({"id": name, "object": "model", "deleted": True})
