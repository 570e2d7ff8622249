"""The buyer's order book API (/api/v1/orders/, /api/v1/leases/), the provider's view
of leases on its GPUs (/api/v1/provider-leases/) and the market view (/api/v1/market/).

One view per operation. Orders and leases are scoped to the caller's organization:
another organization's ids are 404s. Orders need a buyer organization (403 for a
provider-only one); placing needs the admin or member role and an Idempotency-Key.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.converters import query_id
from core.errors import InvalidInput
from core.idempotency import idempotent
from core.money import Money
from core.pagination import page_serializer, paginated_response
from core.permissions import IsBuyerMember, IsBuyerOperator
from core.schema import ErrorSerializer, error_responses
from core.tenancy import get_caller
from marketplace import selectors, services
from marketplace.models import Lease, Order
from providers.permissions import IsProviderMember

TAG = "marketplace"


# --- serializers ----------------------------------------------------------------


# Plain text, not enums: drf-spectacular would name every "kind" and "state" choice set
# alike across apps and warn; the values are in each field's help text.
def _text(values: list[str]) -> serializers.CharField:
    return serializers.CharField(read_only=True, help_text=" | ".join(values))


def _choice_in(values: list[str], default: str) -> serializers.RegexField:
    pattern = "^(" + "|".join(values) + ")$"
    return serializers.RegexField(pattern, default=default, help_text=" | ".join(values))


class OrderSerializer(serializers.ModelSerializer):
    limit_price_per_gpu_hour = serializers.SerializerMethodField()
    state = _text(Order.State.values)
    kind = _text(Order.Kind.values)
    time_in_force = _text(Order.TimeInForce.values)
    workload_kind = _text(Order.Workload.values)

    class Meta:
        model = Order
        fields = [
            "id",
            "state",
            "kind",
            "time_in_force",
            "workload_kind",
            "workload_id",
            "gpu_models",
            "gpu_model_at_least",
            "gpus_per_node",
            "node_count",
            "min_gpu_memory_gib",
            "interconnect",
            "regions",
            "countries",
            "min_reliability",
            "duration_seconds",
            "remaining_seconds",
            "earliest_start",
            "deadline",
            "limit_price_per_gpu_hour_micros",
            "limit_price_per_gpu_hour",
            "currency",
            "reserved_micros",
            "placed_at",
            "closed_at",
            "close_reason",
            "requeues",
        ]
        read_only_fields = fields

    def get_limit_price_per_gpu_hour(self, order: Order) -> str:
        return Money(order.limit_price_per_gpu_hour_micros, order.currency).format()


class LeaseSerializer(serializers.ModelSerializer):
    gpu_uuids = serializers.SerializerMethodField()
    state = _text(Lease.State.values)
    kind = _text(Order.Kind.values)

    class Meta:
        model = Lease
        fields = [
            "id",
            "order",
            "state",
            "kind",
            "gpu_model",
            "gpu_count",
            "gpu_uuids",
            "price_per_gpu_hour_micros",
            "currency",
            "created_at",
            "started_at",
            "ends_at",
            "ended_at",
            "end_reason",
            "billed_until",
            "gpu_seconds_billed",
            "billed_micros",
            "preempt_at",
            "usage_subject",
        ]
        read_only_fields = fields

    def get_gpu_uuids(self, lease: Lease) -> list[str]:
        rows = getattr(lease, "gpu_rows", None)
        if rows is None:
            rows = list(lease.gpus.order_by("gpu_uuid"))
        return [row.gpu_uuid for row in rows]


class ProviderLeaseSerializer(LeaseSerializer):
    """What a provider sees of a lease on its GPUs: not the buyer, not the order."""

    class Meta(LeaseSerializer.Meta):
        fields = [f for f in LeaseSerializer.Meta.fields if f not in ("order", "usage_subject")]
        fields += ["node", "offer"]
        read_only_fields = fields


class OrderPlaceInputSerializer(serializers.Serializer):
    gpus_per_node = serializers.IntegerField(min_value=1, max_value=services.MAX_GPUS_PER_NODE)
    node_count = serializers.IntegerField(min_value=1, max_value=services.MAX_NODES, default=1)
    gpu_models = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list, max_length=32
    )
    gpu_model_at_least = serializers.CharField(
        max_length=64, required=False, default="", help_text="this model or faster (catalog)"
    )
    limit_price_per_gpu_hour = serializers.DecimalField(
        max_digits=18,
        decimal_places=6,
        max_value=services.MAX_PRICE_MICROS // 1_000_000,
        help_text="decimal text in the currency, e.g. '2.50'",
    )
    kind = _choice_in(Order.Kind.values, Order.Kind.ON_DEMAND)
    time_in_force = _choice_in(Order.TimeInForce.values, Order.TimeInForce.STANDING)
    min_gpu_memory_gib = serializers.IntegerField(min_value=0, max_value=10_000, default=0)
    interconnect = serializers.RegexField(
        r"^(nvlink|pcie|)$", default="", allow_blank=True, help_text="nvlink | pcie | empty: any"
    )
    regions = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list, max_length=32
    )
    countries = serializers.ListField(
        child=serializers.RegexField(r"^[A-Za-z]{2}$"), required=False, default=list, max_length=64
    )
    min_reliability = serializers.FloatField(
        min_value=0, max_value=1, required=False, allow_null=True, default=None
    )
    duration_seconds = serializers.IntegerField(
        min_value=60,
        max_value=services.MAX_DURATION_SECONDS,
        required=False,
        allow_null=True,
        default=None,
        help_text="null: open-ended (billed a window at a time)",
    )
    earliest_start = serializers.DateTimeField(required=False, allow_null=True, default=None)
    deadline = serializers.DateTimeField(required=False, allow_null=True, default=None)


# --- orders ---------------------------------------------------------------------


_PAYMENT_REQUIRED = OpenApiResponse(
    response=ErrorSerializer,
    description="insufficient credit: details.missing_micros is the amount missing",
)


class OrderListApi(APIView):
    permission_classes = [IsBuyerMember]

    @extend_schema(
        operation_id="orders_list",
        summary="Your orders, newest first",
        tags=[TAG],
        parameters=[OpenApiParameter("state", str, enum=Order.State.values)],
        responses={200: page_serializer(OrderSerializer), **error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        state = request.query_params.get("state")
        if state is not None and state not in Order.State.values:
            raise InvalidInput(
                f"state must be one of {', '.join(Order.State.values)}",
                details={"parameter": "state"},
            )
        return paginated_response(
            queryset=selectors.orders_for_org(
                organization=get_caller(request).organization, state=state
            ),
            serializer_class=OrderSerializer,
            request=request,
            view=self,
        )


class OrderPlaceApi(APIView):
    permission_classes = [IsBuyerOperator]

    @extend_schema(
        operation_id="orders_place",
        summary="Place an order",
        description=(
            "Reserves the order's maximum cost (every GPU for the whole duration at the "
            "limit price, plus the platform fee; an open-ended order: its first billing "
            "window) from your prepaid credit. 402 with details.missing_micros when it "
            "does not cover it. A standing order waits in the book until matched, "
            "cancelled or its deadline; an ioc order is matched in the next round or expires."
        ),
        tags=[TAG],
        request=OrderPlaceInputSerializer,
        responses={
            201: OrderSerializer,
            402: _PAYMENT_REQUIRED,
            **error_responses(400, 401, 403, 409, 422, 429),
        },
    )
    @idempotent(required=True)
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = OrderPlaceInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = dict(given.validated_data)
        limit = data.pop("limit_price_per_gpu_hour")
        micros = int(limit * 1_000_000)
        if micros <= 0:
            raise InvalidInput(
                "limit_price_per_gpu_hour: must be positive",
                details={"fields": {"limit_price_per_gpu_hour": ["must be positive"]}},
            )
        order = services.order_place(
            organization=caller.organization,
            spec=services.OrderSpec(limit_price_per_gpu_hour_micros=micros, **data),
        )
        return Response(OrderSerializer(order).data, status=status.HTTP_201_CREATED)


class OrderDetailApi(APIView):
    permission_classes = [IsBuyerMember]

    @extend_schema(
        operation_id="orders_retrieve",
        summary="One order, with its leases",
        tags=[TAG],
        responses={200: OrderSerializer, **error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, order_id: int) -> Response:
        caller = get_caller(request)
        order = selectors.order_get(organization=caller.organization, order_id=order_id)
        leases = selectors.leases_for_org(organization=caller.organization, order_id=order.pk)
        body = dict(OrderSerializer(order).data)
        body["leases"] = LeaseSerializer(leases.order_by("pk"), many=True).data
        return Response(body)


class OrderCancelApi(APIView):
    permission_classes = [IsBuyerOperator]

    @extend_schema(
        operation_id="orders_cancel",
        summary="Cancel an order",
        description="Releases its reservation; its live leases end now, billed to now.",
        tags=[TAG],
        request=None,
        responses={200: OrderSerializer, **error_responses(401, 403, 404, 409, 429)},
    )
    def post(self, request: Request, order_id: int) -> Response:
        caller = get_caller(request)
        order = selectors.order_get(organization=caller.organization, order_id=order_id)
        return Response(OrderSerializer(services.order_cancel(order=order)).data)


# --- leases ---------------------------------------------------------------------


class LeaseListApi(APIView):
    permission_classes = [IsBuyerMember]

    @extend_schema(
        operation_id="leases_list",
        summary="Your leases, newest first",
        tags=[TAG],
        parameters=[
            OpenApiParameter("state", str, enum=Lease.State.values),
            OpenApiParameter("order", int),
        ],
        responses={200: page_serializer(LeaseSerializer), **error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        state = _state_param(request, Lease.State.values)
        order_id = query_id(request, "order", what="an order")
        return paginated_response(
            queryset=selectors.leases_for_org(
                organization=get_caller(request).organization,
                order_id=order_id,
                state=state,
            ),
            serializer_class=LeaseSerializer,
            request=request,
            view=self,
        )


class LeaseDetailApi(APIView):
    permission_classes = [IsBuyerMember]

    @extend_schema(
        operation_id="leases_retrieve",
        summary="One lease",
        tags=[TAG],
        responses={200: LeaseSerializer, **error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, lease_id: int) -> Response:
        caller = get_caller(request)
        lease = selectors.lease_get(organization=caller.organization, lease_id=lease_id)
        return Response(LeaseSerializer(lease).data)


class ProviderLeaseListApi(APIView):
    permission_classes = [IsProviderMember]

    @extend_schema(
        operation_id="provider_leases_list",
        summary="Leases on your GPUs, newest first (buyers are not named)",
        tags=[TAG],
        parameters=[OpenApiParameter("state", str, enum=Lease.State.values)],
        responses={
            200: page_serializer(ProviderLeaseSerializer),
            **error_responses(400, 401, 403, 429),
        },
    )
    def get(self, request: Request) -> Response:
        return paginated_response(
            queryset=selectors.leases_on_provider(
                provider=get_caller(request).organization,
                state=_state_param(request, Lease.State.values),
            ),
            serializer_class=ProviderLeaseSerializer,
            request=request,
            view=self,
        )


def _state_param(request: Request, allowed: list[str]) -> str | None:
    state = request.query_params.get("state")
    if state is not None and state not in allowed:
        raise InvalidInput(
            f"state must be one of {', '.join(allowed)}", details={"parameter": "state"}
        )
    return state


# --- the market -----------------------------------------------------------------


class MarketLineSerializer(serializers.Serializer):
    gpu_model = serializers.CharField()
    name = serializers.CharField()
    kind = serializers.CharField()
    currency = serializers.CharField()
    offers = serializers.IntegerField()
    providers = serializers.IntegerField(help_text="how many providers list it (never who)")
    regions = serializers.ListField(child=serializers.CharField())
    gpus_listed = serializers.IntegerField()
    gpus_free = serializers.IntegerField()
    price_min_micros = serializers.IntegerField()
    price_max_micros = serializers.IntegerField()
    price_median_micros = serializers.IntegerField()


class MarketApi(APIView):
    @extend_schema(
        operation_id="market_list",
        summary="Live offers by GPU model and kind, with price ranges (providers anonymised)",
        tags=[TAG],
        responses={200: MarketLineSerializer(many=True), **error_responses(401, 429)},
    )
    def get(self, request: Request) -> Response:
        lines = selectors.market_lines()
        return Response(MarketLineSerializer(lines, many=True).data)
