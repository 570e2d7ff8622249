"""The relay's node side: ``POST /api/v1/agent/nodes/{id}/serve/{aid}/requests`` (take a
batch of the deployment's requests, a long poll) and ``…/replies`` (post a batch of
replies). Both are scoped like every agent route: the agent key's own node (another
node's assignment is a 404), a serve assignment, its current attempt (a stale one is a
409 and nothing is taken or stored). See marketplace/workloads/relay.py."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from core.schema import error_responses
from core.tenancy import get_caller
from marketplace.assignments.agent_apis import TAG_AGENT, AgentApi
from marketplace.workloads import ports as external
from marketplace.workloads.relay import MAX_TAKE, relay
from providers.permissions import agent_node_or_404

MAX_WAIT_SECONDS = 25
MAX_REPLIES = 2000


class TakeInputSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    max = serializers.IntegerField(min_value=1, max_value=MAX_TAKE, default=16)
    wait = serializers.FloatField(min_value=0, max_value=MAX_WAIT_SECONDS, default=10)


class TakeAnswerSerializer(serializers.Serializer):
    requests = serializers.ListField(
        child=serializers.DictField(),
        help_text="{id, kind: generate | embed, request | texts}, oldest first",
    )


class ReplySerializer(serializers.Serializer):
    request = serializers.CharField(max_length=80)


class RepliesInputSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    replies = serializers.ListField(
        child=serializers.DictField(),
        max_length=MAX_REPLIES,
        help_text="{request, accepted} | {request, text, finish_reason} | {request, vectors}"
        " | {request, error: {status, code, message, field}}, in order per request",
    )

    def validate_replies(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for position, item in enumerate(value):
            request_id = item.get("request")
            if not isinstance(request_id, str) or not 0 < len(request_id) <= 80:
                raise serializers.ValidationError(
                    f"replies[{position}].request: the id of a request taken"
                )
        return value


class RepliesAnswerSerializer(serializers.Serializer):
    gone = serializers.ListField(
        child=serializers.CharField(),
        help_text="requests nobody waits for any more: stop generating them",
    )


class ServeRequestsApi(AgentApi):
    @extend_schema(
        operation_id="agent_nodes_serve_requests",
        summary="Take a batch of the deployment's inference requests: a long poll (agents)",
        description=(
            "Answers up to ?max waiting requests as soon as one waits, else an empty list "
            "after ?wait seconds. 409 (stale_attempt) when the attempt is not current: "
            "nothing is taken, and the node must stop serving."
        ),
        tags=[TAG_AGENT],
        request=TakeInputSerializer,
        responses={200: TakeAnswerSerializer, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, node_id: int, assignment_id: int) -> Response:
        node = agent_node_or_404(get_caller(request), node_id)
        given = TakeInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        deployment_id = external.serving_current(
            node_id=node.pk, assignment_id=assignment_id, attempt=given.validated_data["attempt"]
        )
        taken = relay().take(
            deployment_id=deployment_id,
            limit=given.validated_data["max"],
            wait=given.validated_data["wait"],
        )
        return Response({"requests": taken})


class ServeRepliesApi(AgentApi):
    @extend_schema(
        operation_id="agent_nodes_serve_replies",
        summary="Post a batch of replies to the deployment's requests (agents)",
        description=(
            "Replies to requests nobody waits for any more are dropped and named in "
            "``gone``. 409 (stale_attempt) when the attempt is not current: nothing is "
            "stored."
        ),
        tags=[TAG_AGENT],
        request=RepliesInputSerializer,
        responses={200: RepliesAnswerSerializer, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, node_id: int, assignment_id: int) -> Response:
        node = agent_node_or_404(get_caller(request), node_id)
        given = RepliesInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        deployment_id = external.serving_current(
            node_id=node.pk, assignment_id=assignment_id, attempt=given.validated_data["attempt"]
        )
        gone = relay().reply(deployment_id=deployment_id, replies=given.validated_data["replies"])
        return Response({"gone": gone})
