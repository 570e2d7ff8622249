"""The node protocol for agents: /api/v1/agent/nodes/{id}/assignments…, …/runs/{aid}/
events (see services for the protocol).

One view per operation. Every call is scoped to the calling agent key's own node
(``_agent_node``): another node's assignment is a 404, a revoked key a 401, an
organization key a 403, a stale attempt a 409.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.converters import BIGINT_MAX, query_int
from core.schema import error_responses
from core.tenancy import get_caller
from marketplace.assignments import selectors, services
from marketplace.assignments.models import Assignment
from providers.models import Node
from providers.permissions import IsAgentKey, agent_node_or_404

TAG_AGENT = "provider agent"
_KINDS = " | ".join(Assignment.Kind.values)


def _int_param(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    value = query_int(request, name, low=low, high=high, default=default)
    assert value is not None
    return value


def _agent_node(request: Request, node_id: int) -> Node:
    """The node the calling agent key is bound to, if it is ``node_id``: another node,
    or a key that is not an agent key, is refused (404, 403) before anything is read."""
    return agent_node_or_404(get_caller(request), node_id)


class AgentApi(APIView):
    permission_classes = [IsAgentKey]
    # Agents pace themselves (one blocking query, about one report a second per run),
    # as for the heartbeat; a per-key minute limit would cut a busy node off.
    throttle_classes: list[Any] = []


class NodeAssignmentSerializer(serializers.ModelSerializer):
    kind = serializers.CharField(read_only=True, help_text=_KINDS)
    state = serializers.CharField(read_only=True, help_text=" | ".join(Assignment.State.values))
    stop = serializers.BooleanField(source="stop_requested", read_only=True)

    class Meta:
        model = Assignment
        fields = ["id", "kind", "state", "attempt", "locked_until", "stop", "stop_reason"]
        read_only_fields = fields


class NodeAssignmentsSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="pass as ?index= in the next query")
    changed = serializers.BooleanField(help_text="false: the wait ran out, nothing changed")
    assignments = NodeAssignmentSerializer(many=True, help_text="the node's live assignments")


class ClaimSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    attempt = serializers.IntegerField(help_text="the fencing token: send it with every report")
    spec = serializers.DictField(help_text="command: {command, env, files}")
    gpu_uuids = serializers.ListField(child=serializers.CharField())
    locked_until = serializers.DateTimeField()
    ttl_seconds = serializers.IntegerField()
    renew_seconds = serializers.IntegerField(help_text="report at least this often")


class RunEventInputSerializer(serializers.Serializer):
    type = serializers.RegexField(
        r"^(started|log|finished|failed)$", help_text="started | log | finished | failed"
    )
    stream = serializers.RegexField(r"^(stdout|stderr)$", required=False, help_text="log")
    text = serializers.CharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        max_length=services.MAX_LOG_LINE_CHARS,
        help_text="log: one line",
    )
    exit_code = serializers.IntegerField(
        required=False, min_value=-255, max_value=255, help_text="finished (-N: killed by signal N)"
    )
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=services.MAX_REASON_CHARS, help_text="failed"
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        needed = {"log": ("stream", "text"), "finished": ("exit_code",), "failed": ("reason",)}
        missing = [name for name in needed.get(attrs["type"], ()) if name not in attrs]
        if missing:
            raise serializers.ValidationError(
                {name: [f"required for a {attrs['type']} event"] for name in missing}
            )
        return attrs


class RunEventsInputSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    batch = serializers.IntegerField(
        min_value=1, max_value=2**31 - 1, help_text="1, 2, … per claim; resend a lost one as is"
    )
    events = serializers.ListField(
        child=RunEventInputSerializer(), max_length=services.MAX_EVENTS_PER_BATCH
    )


class RunEventsAnswerSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    attempt = serializers.IntegerField()
    state = serializers.CharField()
    locked_until = serializers.DateTimeField(allow_null=True)
    stop = serializers.BooleanField(help_text="kill the work (its process group) now")
    stop_reason = serializers.CharField()
    ttl_seconds = serializers.IntegerField()
    renew_seconds = serializers.IntegerField()
    applied = serializers.BooleanField(help_text="false: this batch was applied before")


def _renew_seconds(ttl_seconds: int) -> int:
    return max(1, ttl_seconds // 3)


class NodeAssignmentsApi(AgentApi):
    @extend_schema(
        operation_id="agent_nodes_assignments",
        summary="The node's live assignments: a blocking query (agents)",
        description=(
            "Answers at once when the node's index differs from ?index= (0 on the first "
            "query), else waits up to ?wait= seconds (at most 30) for it to move, and "
            "answers changed=false with no assignments when it does not."
        ),
        tags=[TAG_AGENT],
        parameters=[
            OpenApiParameter("index", int, description="the index of your last answer"),
            OpenApiParameter("wait", int, description="seconds to wait, 0 to 30 (default 25)"),
        ],
        responses={200: NodeAssignmentsSerializer, **error_responses(400, 401, 403, 404)},
    )
    def get(self, request: Request, node_id: int) -> Response:
        index = _int_param(request, "index", default=0, low=0, high=BIGINT_MAX)
        wait = _int_param(request, "wait", default=25, low=0, high=selectors.MAX_WAIT_SECONDS)
        node = _agent_node(request, node_id)
        found = selectors.node_assignments_wait(node_id=node.pk, index=index, wait_seconds=wait)
        return Response(
            NodeAssignmentsSerializer(
                {"index": found.index, "changed": found.changed, "assignments": found.assignments}
            ).data
        )


class NodeAssignmentClaimApi(AgentApi):
    @extend_schema(
        operation_id="agent_nodes_assignments_claim",
        summary="Claim one of the node's queued assignments (agents)",
        description="409 when it is claimed already, ended, or its lease is not active.",
        tags=[TAG_AGENT],
        request=None,
        responses={200: ClaimSerializer, **error_responses(401, 403, 404, 409)},
    )
    def post(self, request: Request, node_id: int, assignment_id: int) -> Response:
        node = _agent_node(request, node_id)
        claim = services.assignment_claim(node_id=node.pk, assignment_id=assignment_id)
        assignment = claim.assignment
        return Response(
            ClaimSerializer(
                {
                    "id": assignment.pk,
                    "kind": assignment.kind,
                    "attempt": assignment.attempt,
                    "spec": assignment.spec,
                    "gpu_uuids": claim.gpu_uuids,
                    "locked_until": assignment.locked_until,
                    "ttl_seconds": claim.ttl_seconds,
                    "renew_seconds": _renew_seconds(claim.ttl_seconds),
                }
            ).data
        )


class NodeRunEventsApi(AgentApi):
    @extend_schema(
        operation_id="agent_nodes_runs_events",
        summary="Report a batch of a run's events and renew its claim (agents)",
        description=(
            "409 (stale_attempt) when the attempt is not the current one or the run "
            "ended: nothing changes, and the node must kill the work."
        ),
        tags=[TAG_AGENT],
        request=RunEventsInputSerializer,
        responses={200: RunEventsAnswerSerializer, **error_responses(400, 401, 403, 404, 409, 413)},
    )
    def post(self, request: Request, node_id: int, assignment_id: int) -> Response:
        node = _agent_node(request, node_id)
        given = RunEventsInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        report = services.assignment_report(
            node_id=node.pk,
            assignment_id=assignment_id,
            attempt=given.validated_data["attempt"],
            batch=given.validated_data["batch"],
            items=[dict(item) for item in given.validated_data["events"]],
        )
        assignment = report.assignment
        return Response(
            RunEventsAnswerSerializer(
                {
                    "id": assignment.pk,
                    "attempt": assignment.attempt,
                    "state": assignment.state,
                    "locked_until": assignment.locked_until,
                    "stop": report.stop,
                    "stop_reason": assignment.stop_reason,
                    "ttl_seconds": report.ttl_seconds,
                    "renew_seconds": _renew_seconds(report.ttl_seconds),
                    "applied": report.applied,
                }
            ).data
        )
