"""``/v1/``: the OpenAI- and Together-compatible surface (included from config.urls)."""

from __future__ import annotations

from django.urls import path

from core.routing import by_method
from marketplace.workloads import apis, batch_apis, deletion_apis, inference_apis, job_apis

app_name = "workloads"

urlpatterns = [
    # files (both clients)
    path("files", by_method(get=apis.FileListApi, post=apis.FileCreateApi), name="files"),
    path(
        "files/<str:file_id>",
        by_method(get=apis.FileDetailApi, delete=apis.FileDeleteApi),
        name="file-detail",
    ),
    path("files/<str:file_id>/content", apis.FileContentApi.as_view(), name="file-content"),
    path(
        "files/<str:file_id>/upload",
        apis.FileUploadContentApi.as_view(),
        name="file-upload-content",
    ),
    path(
        "files/<str:file_id>/preprocess", apis.FilePreprocessApi.as_view(), name="file-preprocess"
    ),
    # fine-tuning jobs, OpenAI's shape
    path(
        "fine_tuning/jobs",
        by_method(get=job_apis.OpenAIJobListApi, post=job_apis.OpenAIJobCreateApi),
        name="openai-jobs",
    ),
    path("fine_tuning/jobs/<str:job_id>", job_apis.OpenAIJobDetailApi.as_view(), name="openai-job"),
    path(
        "fine_tuning/jobs/<str:job_id>/cancel",
        job_apis.OpenAIJobCancelApi.as_view(),
        name="openai-job-cancel",
    ),
    path(
        "fine_tuning/jobs/<str:job_id>/events",
        job_apis.OpenAIJobEventsApi.as_view(),
        name="openai-job-events",
    ),
    path(
        "fine_tuning/jobs/<str:job_id>/checkpoints",
        job_apis.OpenAIJobCheckpointsApi.as_view(),
        name="openai-job-checkpoints",
    ),
    # fine-tunes, Together's shape (the fixed paths before the <id> ones)
    path(
        "fine-tunes",
        by_method(get=job_apis.TogetherJobListApi, post=job_apis.TogetherJobCreateApi),
        name="together-jobs",
    ),
    path(
        "fine-tunes/estimate-price",
        job_apis.TogetherEstimatePriceApi.as_view(),
        name="together-estimate-price",
    ),
    path(
        "fine-tunes/models/limits",
        job_apis.TogetherModelLimitsApi.as_view(),
        name="together-model-limits",
    ),
    path(
        "fine-tunes/<str:job_id>",
        by_method(get=job_apis.TogetherJobDetailApi, delete=deletion_apis.TogetherJobDeleteApi),
        name="together-job",
    ),
    path(
        "fine-tunes/<str:job_id>/metrics",
        deletion_apis.TogetherJobMetricsApi.as_view(),
        name="together-job-metrics",
    ),
    path(
        "fine-tunes/<str:job_id>/cancel",
        job_apis.TogetherJobCancelApi.as_view(),
        name="together-job-cancel",
    ),
    path(
        "fine-tunes/<str:job_id>/events",
        job_apis.TogetherJobEventsApi.as_view(),
        name="together-job-events",
    ),
    path(
        "fine-tunes/<str:job_id>/checkpoints",
        job_apis.TogetherJobCheckpointsApi.as_view(),
        name="together-job-checkpoints",
    ),
    path("finetune/download", job_apis.TogetherDownloadApi.as_view(), name="together-download"),
    # batches (OpenAI), on interruptible capacity
    path(
        "batches",
        by_method(get=batch_apis.BatchListApi, post=batch_apis.BatchCreateApi),
        name="batches",
    ),
    path("batches/<str:batch_id>", batch_apis.BatchDetailApi.as_view(), name="batch"),
    path("batches/<str:batch_id>/cancel", batch_apis.BatchCancelApi.as_view(), name="batch-cancel"),
    # inference
    path("chat/completions", inference_apis.ChatCompletionApi.as_view(), name="chat-completions"),
    path("completions", inference_apis.CompletionApi.as_view(), name="completions"),
    path("embeddings", inference_apis.EmbeddingsApi.as_view(), name="embeddings"),
    path("models", inference_apis.ModelListApi.as_view(), name="models"),
    path(
        "models/<path:model>",
        by_method(get=inference_apis.ModelDetailApi, delete=deletion_apis.ModelDeleteApi),
        name="model-detail",
    ),
]
