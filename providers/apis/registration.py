"""The agent API: a node registers and reports its inventory."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.schema import error_responses
from core.tenancy import get_caller
from providers import services
from providers.apis.common import MAX_GPUS_PER_NODE, TAG_AGENT
from providers.permissions import (
    IsAgentKey,
)


class GpuInventoryInputSerializer(serializers.Serializer):
    index = serializers.IntegerField(min_value=0, max_value=MAX_GPUS_PER_NODE)
    uuid = serializers.RegexField(r"^[A-Za-z0-9-]{4,96}$")
    name = serializers.CharField(max_length=128)
    memory_total_mib = serializers.IntegerField(min_value=1, max_value=10**7)
    interconnect = serializers.ChoiceField(choices=["nvlink", "pcie"], required=False)
    nvlink_links = serializers.IntegerField(min_value=0, max_value=64, default=0)
    pcie_generation = serializers.IntegerField(
        min_value=1, max_value=16, required=False, allow_null=True
    )
    pcie_width = serializers.IntegerField(
        min_value=1, max_value=64, required=False, allow_null=True
    )
    mig_mode = serializers.BooleanField(required=False, allow_null=True, default=None)


class NodeRegisterInputSerializer(serializers.Serializer):
    hostname = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
    site = serializers.CharField(
        max_length=100, required=False, allow_null=True, help_text="the name of one of your sites"
    )
    agent_version = serializers.CharField(max_length=32, default="")
    inventory_source = serializers.ChoiceField(choices=["nvml", "file"], default="nvml")
    driver_version = serializers.CharField(max_length=64, allow_blank=True, default="")
    cuda_version = serializers.CharField(max_length=32, allow_blank=True, default="")
    gpus = GpuInventoryInputSerializer(  # type: ignore[call-arg]
        many=True, max_length=MAX_GPUS_PER_NODE
    )

    def validate_gpus(self, gpus: list[dict]) -> list[dict]:
        uuids = [gpu["uuid"] for gpu in gpus]
        if len(set(uuids)) != len(uuids):
            raise serializers.ValidationError("each GPU UUID may appear once")
        return gpus


class RegisteredSerializer(serializers.Serializer):
    node_id = serializers.IntegerField()
    heartbeat_interval_seconds = serializers.IntegerField()
    health = serializers.CharField()
    gpus = serializers.ListField(child=serializers.DictField())


class NodeRegisterApi(APIView):
    permission_classes = [IsAgentKey]

    @extend_schema(
        operation_id="agent_nodes_register",
        summary="Register a node and report its inventory (agents)",
        description="Agent keys only. Registering the same hostname again refreshes its "
        "inventory. A key is bound to the node it first registers: another hostname is a 409 "
        "naming the key's node (one agent key per node).",
        tags=[TAG_AGENT],
        request=NodeRegisterInputSerializer,
        responses={200: RegisteredSerializer, **error_responses(400, 401, 403, 409, 413, 429)},
    )
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = NodeRegisterInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        node = services.node_register(
            organization=caller.organization,
            hostname=data["hostname"],
            site_name=data.get("site"),
            api_key_id=caller.api_key_id,
            agent_version=data["agent_version"],
            inventory_source=data["inventory_source"],
            inventory={
                "driver_version": data["driver_version"],
                "cuda_version": data["cuda_version"],
                "gpus": data["gpus"],
            },
        )
        gpus = node.gpus.filter(present=True).order_by("index")
        return Response(
            RegisteredSerializer(
                {
                    "node_id": node.pk,
                    "heartbeat_interval_seconds": node.heartbeat_interval_seconds,
                    "health": node.health,
                    "gpus": [{"uuid": g.uuid, "model": g.model or None} for g in gpus],
                }
            ).data
        )
