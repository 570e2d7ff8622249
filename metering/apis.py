"""HTTP endpoints of metering under /api/v1/usage/.

- ``POST batch``: up to 1,000 usage events (1 MiB); one answer per event, in order:
  ``accepted``, ``duplicate``, or ``rejected`` with a code and a reason. Who may send
  what is ``metering.services.Sender``. The body is decoded with msgspec straight
  from the bytes (no DRF parser, no serializer per event) and the answer is encoded
  the same way; the serializers below only document the shapes.
- ``GET events``: the raw usage events the caller may see, newest first.
- ``GET meter``: usage aggregated per window and grouping.
- ``GET delivered``: a provider's GPU-seconds delivered, aggregated the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from django.http import HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import InvalidInput
from core.pagination import page_serializer, paginated_response
from core.schema import error_responses
from core.tenancy import get_caller
from metering import selectors, services
from metering.models import UsageEvent
from metering.schema import MAX_EVENTS_PER_BATCH, USAGE_TYPES, batch_decode

_encode = msgspec.json.Encoder().encode
MAX_METER_SPAN = timedelta(days=400)


class CanSendUsage(BasePermission):
    """Admin and member keys send usage, and so do node agents' keys (scope ``agent``,
    role member): that is how nodes report what they ran. An agent key reports for the
    node it is bound to, so one that has not registered its node yet sends nothing."""

    admits_agent_keys = True
    message = "sending usage needs an admin or member key (finance keys only read)"

    def has_permission(self, request: Request, view: object) -> bool:
        caller = getattr(request, "caller", None)
        if caller is None or caller.role not in ("admin", "member"):
            return False
        if caller.is_agent and caller.agent_node_id is None:
            self.message = (
                "this agent key has not registered its node yet "
                "(POST /api/v1/agent/nodes/register), so it reports for no node"
            )
            return False
        return True


# --- documentation of the shapes ---------------------------------------------


class SubjectSerializer(serializers.Serializer):
    org = serializers.IntegerField(help_text="the buyer organization billed")
    job = serializers.CharField(required=False, help_text="a fine-tune job")
    deployment = serializers.CharField(required=False, help_text="an inference deployment")
    lease = serializers.CharField(required=False, help_text="a raw GPU lease")


class UsageEventInSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="unique per source: the idempotency key")
    source = serializers.CharField(  # type: ignore[assignment]  # Field.source, in the stubs
        help_text="the runtime, agent or lease that measured it"
    )
    type = serializers.ChoiceField(choices=sorted(USAGE_TYPES))
    subject = SubjectSerializer(help_text="org and exactly one of job, deployment, lease")
    time = serializers.DateTimeField(help_text="with a time zone; at most 5 minutes ahead")
    quantity = serializers.IntegerField(min_value=0, help_text="tokens or GPU-seconds")
    dimensions = serializers.DictField(
        required=False,
        help_text="model, training_type, gpu_model, provider, region, "
        "lease_price_micros_per_hour …",
    )


class UsageBatchInSerializer(serializers.Serializer):
    events = UsageEventInSerializer(many=True, help_text=f"1 to {MAX_EVENTS_PER_BATCH}")


class UsageOutcomeSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    id = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "rejected"])
    code = serializers.CharField(
        required=False, help_text="rejected: invalid, oversized, future, forbidden, unknown_subject"
    )
    reason = serializers.CharField(required=False)
    note = serializers.CharField(required=False, help_text="e.g. counted in a later period")


class UsageBatchOutSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicate = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = UsageOutcomeSerializer(many=True)


class UsageEventSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="event_id")  # type: ignore[assignment]
    subject = serializers.SerializerMethodField(help_text="org and one of job, deployment, lease")
    time = serializers.DateTimeField(source="occurred_at")

    class Meta:
        model = UsageEvent
        fields = [
            "id",
            "source",
            "type",
            "subject",
            "time",
            "quantity",
            "dimensions",
            "period",
            "recorded_at",
            "note",
        ]

    @extend_schema_field(SubjectSerializer)
    def get_subject(self, obj: UsageEvent) -> dict[str, object]:
        return {"org": obj.buyer_id, obj.subject_kind: obj.subject_id}


class MeterRowSerializer(serializers.Serializer):
    window_start = serializers.DateTimeField()
    group = serializers.DictField()
    value = serializers.IntegerField()


class MeterSerializer(serializers.Serializer):
    type = serializers.CharField(allow_null=True)
    aggregation = serializers.CharField()
    window = serializers.CharField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    group_by = serializers.ListField(child=serializers.CharField())
    rows = MeterRowSerializer(many=True)
    truncated = serializers.BooleanField(
        help_text=f"more than {selectors.MAX_METER_ROWS} rows: narrow the period or grouping"
    )


# --- query parameters -------------------------------------------------------


def _datetime(request: Request, name: str, default: datetime) -> datetime:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = parse_datetime(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise InvalidInput(
            f"{name} must be an ISO 8601 time with a time zone, e.g. 2026-11-01T00:00:00Z",
            details={"parameter": name},
        )
    return value.astimezone(UTC)


def _choice(request: Request, name: str, choices: tuple[str, ...], default: str) -> str:
    value = request.query_params.get(name, default)
    if value not in choices:
        raise InvalidInput(
            f"{name} must be one of {', '.join(choices)}", details={"parameter": name}
        )
    return value


def _usage_type(request: Request) -> str | None:
    value = request.query_params.get("type")
    if value is not None and value not in USAGE_TYPES:
        raise InvalidInput(
            f"type must be one of {', '.join(sorted(USAGE_TYPES))}", details={"parameter": "type"}
        )
    return value


def _group_by(request: Request) -> list[str]:
    raw = request.query_params.get("group_by", "")
    names = [name.strip() for name in raw.split(",") if name.strip()]
    for name in names:
        if not name.isidentifier() or len(name) > 64 or not name.islower():
            raise InvalidInput(
                f"group_by: {name!r} is not a column ({', '.join(selectors.GROUP_COLUMNS)}) "
                "or a dimension name",
                details={"parameter": "group_by"},
            )
    if len(names) > 4:
        raise InvalidInput("group_by takes at most 4 names", details={"parameter": "group_by"})
    return names


def _period(request: Request) -> tuple[datetime, datetime]:
    now = timezone.now()
    until = _datetime(request, "until", now)
    since = _datetime(request, "since", until - timedelta(days=30))
    if since >= until:
        raise InvalidInput(
            "until must be later than since (the period is [since, until))",
            details={"parameter": "until"},
        )
    if until - since > MAX_METER_SPAN:
        raise InvalidInput("a meter spans at most 400 days", details={"parameter": "since"})
    return since, until


_METER_PARAMETERS = [
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="inclusive; default until-30d"),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="exclusive; default now"),
    OpenApiParameter(
        "window", OpenApiTypes.STR, enum=list(selectors.WINDOWS), description="default day"
    ),
    OpenApiParameter(
        "aggregation",
        OpenApiTypes.STR,
        enum=list(selectors.AGGREGATIONS),
        description="default sum",
    ),
    OpenApiParameter(
        "unique_of", OpenApiTypes.STR, description="unique_count: what to count (default subject)"
    ),
    OpenApiParameter(
        "group_by",
        OpenApiTypes.STR,
        description="comma-separated: type, subject, subject_kind, buyer, period, "
        "or a dimension (model, gpu_model, region, training_type …)",
    ),
]


def _meter_response(request: Request, usage, usage_type: str | None) -> Response:
    since, until = _period(request)
    aggregation = _choice(request, "aggregation", selectors.AGGREGATIONS, "sum")
    window = _choice(request, "window", selectors.WINDOWS, "day")
    group_by = _group_by(request)
    unique_of = request.query_params.get("unique_of", "subject")
    if not unique_of.isidentifier() or not unique_of.islower():
        raise InvalidInput(
            "unique_of must be a column or a dimension name", details={"parameter": "unique_of"}
        )
    usage = usage.filter(occurred_at__gte=since, occurred_at__lt=until)
    if usage_type is not None:
        usage = usage.filter(type=usage_type)
    rows = selectors.meter(
        usage=usage, aggregation=aggregation, window=window, group_by=group_by, unique_of=unique_of
    )
    truncated = len(rows) > selectors.MAX_METER_ROWS
    report = {
        "type": usage_type,
        "aggregation": aggregation,
        "window": window,
        "since": since,
        "until": until,
        "group_by": group_by,
        "rows": rows[: selectors.MAX_METER_ROWS],
        "truncated": truncated,
    }
    return Response(MeterSerializer(report).data)


# --- views ------------------------------------------------------------------


class UsageBatchApi(APIView):
    permission_classes = [CanSendUsage]

    @extend_schema(
        operation_id="usage_batch_create",
        summary="Send a batch of usage events (agents, runtimes, trusted integrations)",
        description="Up to 1,000 events and 1 MiB. Each event is answered on its own: "
        "accepted, duplicate (its source and id were seen before: nothing changes), or "
        "rejected with a code and reason. A bad event never sinks the others. Buyer keys "
        "may send only their own organization's usage; provider keys report their own "
        "GPU-seconds; operator keys may send any buyer's usage.",
        tags=["usage"],
        request=UsageBatchInSerializer,
        responses={200: UsageBatchOutSerializer, **error_responses(400, 401, 403, 413, 429)},
    )
    def post(self, request: Request) -> HttpResponse:
        caller = get_caller(request)
        events = batch_decode(request.body)
        outcomes = services.usage_ingest(sender=services.Sender.for_caller(caller), events=events)
        counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
        for outcome in outcomes:
            counts[outcome.status] += 1
        body = _encode({**counts, "results": outcomes})
        return HttpResponse(body, content_type="application/json")


class UsageEventListApi(APIView):
    @extend_schema(
        operation_id="usage_events_list",
        summary="Your organization's usage events, newest first",
        tags=["usage"],
        parameters=[
            OpenApiParameter("type", OpenApiTypes.STR, enum=sorted(USAGE_TYPES)),
            OpenApiParameter("since", OpenApiTypes.DATETIME, description="inclusive"),
            OpenApiParameter("until", OpenApiTypes.DATETIME, description="exclusive"),
        ],
        responses={200: page_serializer(UsageEventSerializer), **error_responses(400, 401, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        far = datetime(1970, 1, 1, tzinfo=UTC)
        since = _datetime(request, "since", far)
        until = _datetime(request, "until", timezone.now() + timedelta(days=1))
        usage = selectors.usage_list(
            caller=caller, usage_type=_usage_type(request), since=since, until=until
        )
        return paginated_response(
            queryset=usage, serializer_class=UsageEventSerializer, request=request, view=self
        )


class UsageMeterApi(APIView):
    @extend_schema(
        operation_id="usage_meter",
        summary="Your usage over time: per model, job, GPU type …",
        description="Aggregates your organization's usage of one type (or all) per "
        "window, grouped by columns or dimensions. Example: "
        "?type=tokens.training&window=day&group_by=model,subject",
        tags=["usage"],
        parameters=[
            OpenApiParameter("type", OpenApiTypes.STR, enum=sorted(USAGE_TYPES)),
            *_METER_PARAMETERS,
        ],
        responses={200: MeterSerializer, **error_responses(400, 401, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        return _meter_response(
            request, selectors.usage_visible_to(caller=caller), _usage_type(request)
        )


class GpuSecondsDeliveredApi(APIView):
    @extend_schema(
        operation_id="usage_delivered",
        summary="GPU-seconds your organization delivered as a provider",
        description="Example: ?window=day&group_by=gpu_model,region",
        tags=["usage"],
        parameters=_METER_PARAMETERS,
        responses={200: MeterSerializer, **error_responses(400, 401, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        return _meter_response(
            request, selectors.gpu_seconds_delivered_by(caller=caller), "gpu.seconds"
        )
