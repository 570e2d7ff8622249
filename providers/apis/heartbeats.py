"""The agent API: heartbeats with telemetry per GPU, served without DRF (see ``node_heartbeat``)."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import (
    NotAuthenticated,
    ParseError,
    PermissionDenied,
    UnsupportedMediaType,
)
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.authentication import api_key_caller
from core.errors import error_response
from core.schema import error_responses
from providers import services
from providers.apis.common import MAX_GPUS_PER_NODE, TAG_AGENT
from providers.permissions import (
    AGENT_ONLY_MESSAGE,
    IsAgentKey,
    agent_node_id_or_404,
    is_agent_caller,
)


class GpuTelemetryInputSerializer(serializers.Serializer):
    uuid = serializers.CharField(max_length=96)
    utilization_pct = serializers.IntegerField(
        min_value=0, max_value=100, required=False, allow_null=True
    )
    memory_used_mib = serializers.IntegerField(
        min_value=0, max_value=10**7, required=False, allow_null=True
    )
    temperature_c = serializers.IntegerField(
        min_value=-100, max_value=200, required=False, allow_null=True
    )
    power_mw = serializers.IntegerField(
        min_value=0, max_value=10**8, required=False, allow_null=True
    )
    ecc_corrected = serializers.IntegerField(
        min_value=0, max_value=2**62, required=False, allow_null=True
    )
    ecc_uncorrected = serializers.IntegerField(
        min_value=0, max_value=2**62, required=False, allow_null=True
    )
    xid_events = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=10**6),
        max_length=100,
        default=list,
    )


class HeartbeatInputSerializer(serializers.Serializer):
    gpus = GpuTelemetryInputSerializer(  # type: ignore[call-arg]
        many=True, max_length=MAX_GPUS_PER_NODE, default=list
    )


class HeartbeatAcceptedSerializer(serializers.Serializer):
    health = serializers.CharField()
    health_reason = serializers.CharField()
    heartbeat_interval_seconds = serializers.IntegerField()
    unknown_gpu_uuids = serializers.ListField(
        child=serializers.CharField(), help_text="not in the inventory: register again"
    )


_TELEMETRY_RANGES = {
    name: (
        field.min_value if field.min_value is not None else -(2**62),
        field.max_value if field.max_value is not None else 2**62,
    )
    for name, field in GpuTelemetryInputSerializer().fields.items()
    if isinstance(field, serializers.IntegerField)
}
_XIDS: Any = GpuTelemetryInputSerializer().fields["xid_events"]  # a ListField of integers
_MAX_XIDS = _XIDS.max_length

# The heartbeat body as msgspec types, made from GpuTelemetryInputSerializer's rules
# (which document it): decoding checks it, and a failure names the place.
_GpuTelemetryIn = msgspec.defstruct(
    "GpuTelemetryIn",
    [
        ("uuid", Annotated[str, msgspec.Meta(min_length=1, max_length=96)]),
        *(
            (name, Annotated[int, msgspec.Meta(ge=low, le=high)] | None, None)
            for name, (low, high) in _TELEMETRY_RANGES.items()
        ),
        (
            "xid_events",
            Annotated[
                list[
                    Annotated[int, msgspec.Meta(ge=_XIDS.child.min_value, le=_XIDS.child.max_value)]
                ],
                msgspec.Meta(max_length=_MAX_XIDS),
            ]
            | None,
            None,
        ),
    ],
)
_HeartbeatIn = msgspec.defstruct(
    "HeartbeatIn",
    [
        (
            "gpus",
            Annotated[list[_GpuTelemetryIn], msgspec.Meta(max_length=MAX_GPUS_PER_NODE)],  # type: ignore[valid-type]
            msgspec.field(default_factory=list),
        )
    ],
)
_heartbeat_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(_HeartbeatIn)
_FAILURE_PLACE = re.compile(r" - at `\$\.?(.*)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `(\w+)`")


def heartbeat_samples(body: bytes) -> list[dict[str, Any]]:
    """The heartbeat body (JSON), checked: one dict per GPU, every telemetry field
    present (None where not reported). msgspec rather than a DRF serializer: this runs
    for every node every few seconds, and DRF's field machinery costs more than the
    database work. An error names the place, e.g. ``gpus[3].utilization_pct``."""
    try:
        heartbeat = _heartbeat_decoder.decode(body or b"{}")
    except msgspec.ValidationError as exc:
        raise serializers.ValidationError(_heartbeat_error(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ParseError(f"JSON parse error - {exc}") from None
    samples = [msgspec.structs.asdict(gpu) for gpu in heartbeat.gpus]
    seen: set[str] = set()
    for position, sample in enumerate(samples):
        if sample["uuid"] in seen:
            raise serializers.ValidationError(
                {f"gpus[{position}].uuid": ["each GPU may report once per heartbeat"]}
            )
        seen.add(sample["uuid"])
        if sample["xid_events"] is None:
            sample["xid_events"] = []
    return samples


def _heartbeat_error(message: str) -> dict[str, list[str]]:
    """msgspec's message (``Expected `int` <= 100 - at `$.gpus[1].utilization_pct```)
    as the API's field errors, in the words of the schema."""
    found = _FAILURE_PLACE.search(message)
    place = found.group(1) if found else ""
    missing = _MISSING_FIELD.match(message)
    if missing:
        place = f"{place}.{missing.group(1)}" if place else missing.group(1)
    place = re.sub(r"(\.xid_events)\[\d+\]$", r"\1", place)  # the list is the field
    name = place.rsplit(".", 1)[-1] if "." in place else ""
    if name in _TELEMETRY_RANGES:
        low, high = _TELEMETRY_RANGES[name]
        return {place: [f"must be a whole number from {low} to {high}"]}
    if name == "uuid":
        return {place: ["a GPU UUID is required"]}
    if name == "xid_events":
        return {place: [f"must be a list of at most {_MAX_XIDS} XID numbers"]}
    if place.startswith("gpus["):
        return {place.split(".", 1)[0]: ["must be an object"]}
    if "length <=" in message:
        return {"gpus": [f"at most {MAX_GPUS_PER_NODE} GPUs per heartbeat"]}
    return {"gpus": ["must be a list of GPU samples"]}


class NodeHeartbeatApi(APIView):
    """The heartbeat's documentation, and its answer to methods other than POST.
    POST is served by ``node_heartbeat`` below, without DRF."""

    permission_classes = [IsAgentKey]
    throttle_classes: list[Any] = []  # as node_heartbeat: no per-key rate limit

    @extend_schema(
        operation_id="agent_nodes_heartbeat",
        summary="A heartbeat with telemetry per GPU (agents)",
        tags=[TAG_AGENT],
        request=HeartbeatInputSerializer,
        responses={
            200: HeartbeatAcceptedSerializer,
            **error_responses(400, 401, 403, 404, 413),
        },
    )
    def post(self, request: Request, node_id: int) -> Response:
        raise NotImplementedError  # never called: see node_heartbeat


_heartbeat_other_methods = NodeHeartbeatApi.as_view()


@csrf_exempt  # API keys only: no session, so nothing to forge
def node_heartbeat(request: HttpRequest, node_id: int) -> HttpResponse:
    """POST /api/v1/agent/nodes/<id>/heartbeat: a plain Django view. Every node calls
    it every few seconds, and DRF's per-request machinery (negotiation, parsers,
    renderers) cost more than recording the heartbeat. The checks are the API's own,
    in DRF's order: the key (401: looked up on every request, so a revoked key fails
    at once), the role (403), the body (400, 413, 415), the node (404); errors go
    through core.errors' one handler.

    No per-key rate limit (core.throttling) here: its Redis round trip cost a tenth of
    a heartbeat. Agents pace themselves by the interval the server answers with; a
    key that sends faster only rewrites its own nodes' latest samples and counters
    (storage stays bounded), at most as fast as the server's workers take requests."""
    if request.method != "POST":
        return _heartbeat_other_methods(request, node_id=node_id)
    try:
        found = api_key_caller(request.META.get("HTTP_AUTHORIZATION", "").encode("latin-1"))
        if found is None:
            raise NotAuthenticated()
        caller, _ = found
        if not is_agent_caller(caller):
            raise PermissionDenied(AGENT_ONLY_MESSAGE)
        body = request.body
        if body and request.content_type != "application/json":
            raise UnsupportedMediaType(request.content_type or "")
        samples = heartbeat_samples(body)
        agent_node_id_or_404(caller, node_id)
        result = services.node_heartbeat_record(
            organization=caller.organization,
            node_id=node_id,
            samples=samples,
        )
    except Exception as exc:
        response = error_response(exc)
        if response is None:
            raise
        return response
    return HttpResponse(
        _encode_json(
            {
                "health": result.health,
                "health_reason": result.health_reason,
                "heartbeat_interval_seconds": result.heartbeat_interval_seconds,
                "unknown_gpu_uuids": result.unknown_gpu_uuids,
            }
        ),
        content_type="application/json",
    )


_encode_json = msgspec.json.Encoder().encode
# What drf-spectacular looks for on a callback (as for core.routing.by_method).
node_heartbeat.cls = NodeHeartbeatApi  # type: ignore[attr-defined]
node_heartbeat.initkwargs = {}  # type: ignore[attr-defined]
