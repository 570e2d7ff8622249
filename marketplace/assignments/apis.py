"""Runs on a raw lease for buyers: /api/v1/leases/{id}/runs… (the node protocol's
views are in agent_apis).

One view per operation. A buyer's runs are scoped to its organization (another's lease
or run: 404); creating and cancelling need the admin or member role.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.converters import BIGINT_MAX, query_int
from core.idempotency import idempotent
from core.pagination import page_serializer, paginated_response
from core.permissions import IsBuyerMember, IsBuyerOperator
from core.schema import error_responses
from core.tenancy import get_caller
from marketplace import selectors as market
from marketplace.assignments import selectors, services, specs
from marketplace.assignments.models import Assignment, AssignmentLogLine

TAG_RUNS = "runs"
MAX_LOG_PAGE = 5000
MAX_INDEX = BIGINT_MAX


def _int_param(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    value = query_int(request, name, low=low, high=high, default=default)
    assert value is not None
    return value


# --- serializers ----------------------------------------------------------------------


# Kinds and states as plain text (their values in the help text), as the marketplace's
# serializers do: drf-spectacular would name every "kind" enum alike and warn.
_KINDS = " | ".join(Assignment.Kind.values)


class RunSerializer(serializers.ModelSerializer):
    lease = serializers.IntegerField(source="lease_id", read_only=True)
    kind = serializers.CharField(read_only=True, help_text=_KINDS)
    state = serializers.CharField(read_only=True, help_text=" | ".join(Assignment.State.values))
    command = serializers.SerializerMethodField()
    env_names = serializers.SerializerMethodField(help_text="the names of the env you gave")
    file_names = serializers.SerializerMethodField()

    class Meta:
        model = Assignment
        fields = [
            "id",
            "lease",
            "kind",
            "state",
            "command",
            "env_names",
            "file_names",
            "attempt",
            "created_at",
            "claimed_at",
            "started_at",
            "finished_at",
            "exit_code",
            "failure_reason",
            "stop_requested",
            "stop_reason",
            "log_lines",
            "log_lines_dropped",
        ]
        read_only_fields = fields

    def get_command(self, run: Assignment) -> list[str]:
        return list(run.spec.get("command", []))

    def get_env_names(self, run: Assignment) -> list[str]:
        return sorted(run.spec.get("env", {}))

    def get_file_names(self, run: Assignment) -> list[str]:
        return sorted(run.spec.get("files", {}))


class StrictCharField(serializers.CharField):
    """Text only: DRF's CharField turns 5 or true into "5" or "True"; a command, an
    environment or a file given a number is a mistake to report, not to guess at."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class RunCreateInputSerializer(serializers.Serializer):
    command = serializers.ListField(
        child=StrictCharField(
            allow_blank=True, trim_whitespace=False, max_length=specs.MAX_ARG_CHARS
        ),
        min_length=1,
        max_length=specs.MAX_COMMAND_ARGS,
        help_text="the program and its arguments, run without a shell (give "
        '["sh", "-c", "..."] for one)',
    )
    env = serializers.DictField(
        child=StrictCharField(
            allow_blank=True, trim_whitespace=False, max_length=specs.MAX_ENV_VALUE_CHARS
        ),
        required=False,
        default=dict,
        help_text=f"at most {specs.MAX_ENV_VARS} variables; CUDA_VISIBLE_DEVICES is the "
        "node's (the leased GPUs' UUIDs)",
    )
    files = serializers.DictField(
        child=StrictCharField(
            allow_blank=True, trim_whitespace=False, max_length=specs.MAX_FILE_CHARS
        ),
        required=False,
        default=dict,
        help_text=f"name -> text, written to the run's work directory before it starts "
        f"(at most {specs.MAX_FILES} files, {specs.MAX_FILES_CHARS} characters in all)",
    )


class RunLogLineSerializer(serializers.ModelSerializer):
    stream = serializers.CharField(read_only=True, help_text="stdout | stderr")

    class Meta:
        model = AssignmentLogLine
        fields = ["seq", "attempt", "stream", "text", "received_at"]
        read_only_fields = fields


class RunLogsSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    state = serializers.CharField()
    lines = RunLogLineSerializer(many=True)
    next_after = serializers.IntegerField(help_text="pass as ?after= for the lines after these")
    complete = serializers.BooleanField(help_text="the run ended and every line was returned")


# --- the buyer's runs -----------------------------------------------------------------


class LeaseRunListApi(APIView):
    permission_classes = [IsBuyerMember]

    @extend_schema(
        operation_id="lease_runs_list",
        summary="Runs on one of your leases, newest first",
        tags=[TAG_RUNS],
        responses={200: page_serializer(RunSerializer), **error_responses(400, 401, 403, 404, 429)},
    )
    def get(self, request: Request, lease_id: int) -> Response:
        organization = get_caller(request).organization
        market.lease_get(organization=organization, lease_id=lease_id)
        return paginated_response(
            queryset=selectors.runs_for_lease(organization=organization, lease_id=lease_id),
            serializer_class=RunSerializer,
            request=request,
            view=self,
        )


class LeaseRunCreateApi(APIView):
    permission_classes = [IsBuyerOperator]

    @extend_schema(
        operation_id="lease_runs_create",
        summary="Run a command on a raw lease's GPUs",
        description=(
            "Queues the command for the leased node's agent, which runs it in a work "
            "directory of its own (your files written there), as an unprivileged user, "
            "with CUDA_VISIBLE_DEVICES set to the leased GPUs' UUIDs, and streams its "
            "output back (GET …/logs). The run ends with the lease. 409 when the lease "
            "is not active, not a raw lease, or has 16 runs queued or running."
        ),
        tags=[TAG_RUNS],
        request=RunCreateInputSerializer,
        responses={201: RunSerializer, **error_responses(400, 401, 403, 404, 409, 413, 422, 429)},
    )
    @idempotent(required=True)
    def post(self, request: Request, lease_id: int) -> Response:
        caller = get_caller(request)
        given = RunCreateInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        run = services.run_create(
            organization=caller.organization,
            lease_id=lease_id,
            command=given.validated_data["command"],
            env=given.validated_data["env"],
            files=given.validated_data["files"],
        )
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


class LeaseRunDetailApi(APIView):
    permission_classes = [IsBuyerMember]

    @extend_schema(
        operation_id="lease_runs_retrieve",
        summary="One run",
        tags=[TAG_RUNS],
        responses={200: RunSerializer, **error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, lease_id: int, run_id: int) -> Response:
        run = selectors.run_get(
            organization=get_caller(request).organization, lease_id=lease_id, run_id=run_id
        )
        return Response(RunSerializer(run).data)


class LeaseRunLogsApi(APIView):
    permission_classes = [IsBuyerMember]

    @extend_schema(
        operation_id="lease_runs_logs",
        summary="A run's output lines, in order, after a cursor",
        tags=[TAG_RUNS],
        parameters=[
            OpenApiParameter("after", int, description="the last seq you have (default 0)"),
            OpenApiParameter("limit", int, description=f"1 to {MAX_LOG_PAGE} (default 1000)"),
        ],
        responses={200: RunLogsSerializer, **error_responses(400, 401, 403, 404, 429)},
    )
    def get(self, request: Request, lease_id: int, run_id: int) -> Response:
        after = _int_param(request, "after", default=0, low=0, high=MAX_INDEX)
        limit = _int_param(request, "limit", default=1000, low=1, high=MAX_LOG_PAGE)
        run = selectors.run_get(
            organization=get_caller(request).organization, lease_id=lease_id, run_id=run_id
        )
        lines = selectors.run_log_lines(run=run, after=after, limit=limit)
        next_after = lines[-1].seq if lines else min(after, run.log_lines)
        body = {
            "run": run.pk,
            "state": run.state,
            "lines": lines,
            "next_after": next_after,
            "complete": not run.is_live and next_after >= run.log_lines,
        }
        return Response(RunLogsSerializer(body).data)


class LeaseRunCancelApi(APIView):
    permission_classes = [IsBuyerOperator]

    @extend_schema(
        operation_id="lease_runs_cancel",
        summary="Cancel a run",
        description=(
            "A queued run is cancelled at once; a running one is killed by its node "
            "(its whole process group) within about a second and ends cancelled."
        ),
        tags=[TAG_RUNS],
        request=None,
        responses={200: RunSerializer, **error_responses(401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, lease_id: int, run_id: int) -> Response:
        run = services.run_cancel(
            organization=get_caller(request).organization, lease_id=lease_id, run_id=run_id
        )
        return Response(RunSerializer(run).data)
