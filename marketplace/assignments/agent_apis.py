"""The node protocol for agents: /api/v1/agent/nodes/{id}/assignments…, …/runs/{aid}/
events (see services for the protocol).

One view per operation. Every call is scoped to the calling agent key's own node
(``_agent_node``): another node's assignment is a 404, a revoked key a 401, an
organization key a 403, a stale attempt a 409.
"""

from __future__ import annotations

from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.converters import BIGINT_MAX, query_int
from core.errors import Forbidden, InvalidInput, NotFound
from core.schema import error_responses
from core.tenancy import get_caller
from marketplace.assignments import blobs, selectors, services, serving, training
from marketplace.assignments.models import Assignment
from marketplace.models import Lease
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
        fields = [
            "id",
            "kind",
            "state",
            "attempt",
            "locked_until",
            "stop",
            "stop_reason",
            "gang_size",
            "gang_rank",
        ]
        read_only_fields = fields


class NodeAssignmentsSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="pass as ?index= in the next query")
    changed = serializers.BooleanField(help_text="false: the wait ran out, nothing changed")
    assignments = NodeAssignmentSerializer(many=True, help_text="the node's live assignments")


class ClaimInputSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        help_text="re-posting the claim one holds (a gang member at the barrier): renews it",
    )
    endpoint = serializers.CharField(
        required=False,
        max_length=300,
        help_text="gang members, first claim: host:port of this node for the rendezvous "
        "(member 0's hosts it)",
    )


class RendezvousSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="torchrun --rdzv-id: the job and attempt")
    endpoint = serializers.CharField(help_text="torchrun --rdzv-endpoint: member 0's host:port")
    nnodes = serializers.IntegerField(help_text="torchrun --nnodes")
    rank = serializers.IntegerField(help_text="this member's place in the gang")
    host = serializers.BooleanField(help_text="this member hosts the rendezvous store")


class ClaimSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    attempt = serializers.IntegerField(help_text="the fencing token: send it with every report")
    spec = serializers.DictField(
        help_text="command: {command, env, files}; train: {work, plan, inputs, gpus}; "
        "serve: {deployment_id, base_model, adapter_job, max_batch, gpus}"
    )
    downloads = serializers.DictField(
        required=False,
        help_text="train: signed GET URLs {training_file, validation_file, checkpoint}; "
        "serve: {adapter} (a fine-tuned model's trained adapter)",
    )
    gpu_uuids = serializers.ListField(child=serializers.CharField())
    locked_until = serializers.DateTimeField()
    ttl_seconds = serializers.IntegerField()
    renew_seconds = serializers.IntegerField(help_text="report at least this often")
    gang_size = serializers.IntegerField(help_text="nodes in the gang (1: none)")
    wait = serializers.BooleanField(
        help_text="a gang member: not every member has claimed yet; re-post the claim "
        "with its attempt (about every second) until the rendezvous comes"
    )
    rendezvous = RendezvousSerializer(allow_null=True)
    stop = serializers.BooleanField(help_text="stop: the run was cancelled or its lease ended")


MAX_STEPS = 10_000_000


class TrainingStartedSerializer(serializers.Serializer):
    total_steps = serializers.IntegerField(min_value=1, max_value=MAX_STEPS)
    resumed_from_step = serializers.IntegerField(min_value=0, max_value=MAX_STEPS)
    examples = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    tokens_per_epoch = serializers.IntegerField(min_value=0, max_value=2**62)
    world_size = serializers.IntegerField(min_value=1, max_value=65_536)
    device = serializers.RegexField(r"^[a-z0-9_:-]{1,32}$")
    trainable_parameters = serializers.IntegerField(min_value=0, max_value=2**62)


class StepSerializer(serializers.Serializer):
    step = serializers.IntegerField(min_value=1, max_value=MAX_STEPS)
    loss = serializers.FloatField(min_value=0, max_value=1e6)
    learning_rate = serializers.FloatField(min_value=0, max_value=10, required=False)
    tokens_per_second = serializers.FloatField(min_value=0, max_value=1e12, required=False)
    eta_seconds = serializers.FloatField(min_value=0, max_value=1e9, required=False)


class EvaluationSerializer(serializers.Serializer):
    step = serializers.IntegerField(min_value=1, max_value=MAX_STEPS)
    eval_loss = serializers.FloatField(min_value=0, max_value=1e6)


TRAIN_DATA = {
    "training_started": TrainingStartedSerializer,
    "step": StepSerializer,
    "evaluation": EvaluationSerializer,
}


class RunEventInputSerializer(serializers.Serializer):
    type = serializers.RegexField(
        r"^(started|log|finished|failed|training_started|step|evaluation)$",
        help_text="started | log | finished | failed; train runs also training_started | "
        "step | evaluation (with data)",
    )
    # The metaclass takes declared fields out of the class, so ``Serializer.data``
    # stays the property; only the type checker sees a clash.
    data = serializers.DictField(  # type: ignore[assignment]
        required=False,
        help_text="training_started: {total_steps, resumed_from_step, examples, "
        "tokens_per_epoch, world_size, device, trainable_parameters}; step: {step, loss, "
        "learning_rate, tokens_per_second, eta_seconds}; evaluation: {step, eval_loss}",
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
    retry = serializers.BooleanField(
        required=False,
        help_text="failed, train runs: the node gives the run back (it is stopping); the "
        "run moves to another node",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        needed = {
            "log": ("stream", "text"),
            "finished": ("exit_code",),
            "failed": ("reason",),
            **{kind: ("data",) for kind in TRAIN_DATA},
        }
        missing = [name for name in needed.get(attrs["type"], ()) if name not in attrs]
        if missing:
            raise serializers.ValidationError(
                {name: [f"required for a {attrs['type']} event"] for name in missing}
            )
        shape = TRAIN_DATA.get(attrs["type"])
        if shape is not None:
            data = shape(data=attrs["data"])
            if not data.is_valid():
                raise serializers.ValidationError({"data": data.errors})
            attrs["data"] = dict(data.validated_data)
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


def _base_url(request: Request) -> str:
    """The filesystem store's signed URLs are paths on this server, which the agent
    joins with the server address it was given (behind a proxy or NAT, the address
    this request came to may not be one the node can reach); a bucket store's are
    absolute."""
    del request
    return ""


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
        description=(
            "409 when it is claimed already, ended, or its lease is not active. A gang "
            "member's claim is a barrier: wait=true until every member has claimed; the "
            "holder re-posts it with its attempt (renewing it) until the rendezvous comes."
        ),
        tags=[TAG_AGENT],
        request=ClaimInputSerializer,
        responses={200: ClaimSerializer, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, node_id: int, assignment_id: int) -> Response:
        node = _agent_node(request, node_id)
        given = ClaimInputSerializer(data=request.data or {})
        given.is_valid(raise_exception=True)
        claim = services.assignment_claim(
            node_id=node.pk,
            assignment_id=assignment_id,
            attempt=given.validated_data.get("attempt"),
            endpoint=given.validated_data.get("endpoint", ""),
        )
        assignment = claim.assignment
        downloads: dict[str, Any] = {}
        if assignment.kind == Assignment.Kind.TRAIN:
            downloads = training.train_claim_downloads(
                assignment=assignment, base_url=_base_url(request)
            )
        elif assignment.kind == Assignment.Kind.SERVE:
            downloads = serving.serve_claim_downloads(
                assignment=assignment, base_url=_base_url(request)
            )
        return Response(
            ClaimSerializer(
                {
                    "id": assignment.pk,
                    "kind": assignment.kind,
                    "attempt": assignment.attempt,
                    "spec": assignment.spec,
                    "downloads": downloads,
                    "gpu_uuids": claim.gpu_uuids,
                    "locked_until": assignment.locked_until,
                    "ttl_seconds": claim.ttl_seconds,
                    "renew_seconds": _renew_seconds(claim.ttl_seconds),
                    "gang_size": assignment.gang_size,
                    "wait": claim.wait,
                    "rendezvous": claim.rendezvous,
                    "stop": assignment.stop_requested,
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


# --- uploads ------------------------------------------------------------------------


class UploadInputSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    key = serializers.CharField(max_length=training.MAX_KEY_CHARS, help_text="the artifact key")
    sha256 = serializers.CharField(min_length=64, max_length=64, help_text="hex, lowercase")
    size = serializers.IntegerField(min_value=0, max_value=2**62, help_text="bytes")


class UploadSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    key = serializers.CharField()
    kind = serializers.CharField(help_text="checkpoint | final | merged")
    step = serializers.IntegerField(allow_null=True)
    sha256 = serializers.CharField()
    size = serializers.IntegerField()
    present = serializers.BooleanField(help_text="true: the blob is stored already, no PUT")
    url = serializers.CharField(allow_null=True, help_text="a signed PUT URL (minutes)")
    headers = serializers.DictField(
        child=serializers.CharField(),
        help_text="headers the PUT must carry as they are (a bucket's signed checksum)",
    )
    committed = serializers.BooleanField()
    location = serializers.CharField()


class CommitInputSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1, max_value=2**31 - 1)


def _upload_answer(
    upload: Any, *, present: bool, url: str | None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    return UploadSerializer(
        {
            "id": upload.pk,
            "key": upload.key,
            "kind": upload.kind,
            "step": upload.step,
            "sha256": upload.sha256,
            "size": upload.size,
            "present": present,
            "url": url,
            "headers": headers or {},
            "committed": upload.committed_at is not None,
            "location": upload.location,
        }
    ).data


class NodeRunUploadsApi(AgentApi):
    @extend_schema(
        operation_id="agent_nodes_runs_uploads",
        summary="Declare an artifact upload of a train run; get a signed PUT URL (agents)",
        description=(
            "Content addressed: the URL writes blobs/sha256/<sha256>, and only bytes of "
            "that hash and size are kept. present=true: nothing to PUT. 409 "
            "(stale_attempt) when the attempt is not the current one."
        ),
        tags=[TAG_AGENT],
        request=UploadInputSerializer,
        responses={200: UploadSerializer, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, node_id: int, assignment_id: int) -> Response:
        node = _agent_node(request, node_id)
        given = UploadInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        upload, present = training.upload_declare(
            node_id=node.pk, assignment_id=assignment_id, **given.validated_data
        )
        url: str | None = None
        headers: dict[str, str] = {}
        if not present:
            lease_id = Assignment.objects.values_list("lease_id", flat=True).get(pk=assignment_id)
            url, headers = training.upload_put_url(
                upload=upload, lease_id=lease_id, base_url=_base_url(request)
            )
        return Response(_upload_answer(upload, present=present, url=url, headers=headers))


class NodeRunUploadCommitApi(AgentApi):
    @extend_schema(
        operation_id="agent_nodes_runs_uploads_commit",
        summary="Commit an uploaded artifact: checked, recorded (agents)",
        description=(
            "Checks the blob is stored with the declared size and hash (409 "
            "size_mismatch or hash_mismatch, nothing recorded), and records it: a "
            "checkpoint is where the next attempt resumes. Committing again answers the "
            "same. 409 when nothing was uploaded or the attempt is not current."
        ),
        tags=[TAG_AGENT],
        request=CommitInputSerializer,
        responses={200: UploadSerializer, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, node_id: int, assignment_id: int, upload_id: int) -> Response:
        node = _agent_node(request, node_id)
        given = CommitInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        upload = training.upload_commit(
            node_id=node.pk,
            assignment_id=assignment_id,
            upload_id=upload_id,
            attempt=given.validated_data["attempt"],
        )
        return Response(_upload_answer(upload, present=True, url=None))


# --- blobs through signed URLs (the filesystem store's; see blobs.py) ---------------


def _granted_lease_live(grant: blobs.Grant) -> None:
    state = Lease.objects.filter(pk=grant.lease_id).values_list("state", flat=True).first()
    if state != Lease.State.ACTIVE:
        raise Forbidden(
            f"token: this URL is for lease {grant.lease_id}, which is {state or 'gone'}",
            details={"lease": grant.lease_id},
        )


class BlobPutSerializer(serializers.Serializer):
    key = serializers.CharField()
    sha256 = serializers.CharField()
    size = serializers.IntegerField()


class BlobApi(APIView):
    """The signature is the credential (a node passes these URLs to its downloader
    without its agent key, as it would an S3 presigned URL)."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []

    @extend_schema(
        operation_id="agent_blob_get",
        summary="Download a blob through a signed URL (agents)",
        tags=[TAG_AGENT],
        parameters=[OpenApiParameter("token", str, required=True, description="the signature")],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            **error_responses(400, 403, 404),
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        grant = blobs.grant_check(_token(request), method="GET")
        _granted_lease_live(grant)
        store = blobs.blob_store()
        size = store.stat(grant.key)
        if size is None:
            raise NotFound(f"no blob {grant.key}")
        response = StreamingHttpResponse(
            store.open(grant.key), content_type="application/octet-stream"
        )
        response["Content-Length"] = str(size)
        return response

    @extend_schema(
        operation_id="agent_blob_put",
        summary="Upload a blob through a signed URL (agents)",
        description="The body must have the SHA-256 and size the URL was signed for.",
        tags=[TAG_AGENT],
        parameters=[OpenApiParameter("token", str, required=True, description="the signature")],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={200: BlobPutSerializer, **error_responses(400, 403, 413)},
    )
    def put(self, request: Request) -> Response:
        grant = blobs.grant_check(_token(request), method="PUT")
        _granted_lease_live(grant)
        raw = request._request

        def chunks() -> Any:
            while chunk := raw.read(blobs.CHUNK):
                yield chunk

        blobs.blob_store().write(grant.key, chunks(), sha256=grant.sha256, size=grant.size)
        return Response({"key": grant.key, "sha256": grant.sha256, "size": grant.size})


def _token(request: Request) -> str:
    token = request.query_params.get("token", "")
    if not token or len(token) > 4096:
        raise InvalidInput("token: required (the signed URL's query)")
    return token
