"""HTTP endpoints of billing under /api/v1/: accounts and balances, the journal, the
trial balance and finance's manual corrections; the price book, invoices and credit
notes, billing profiles, and providers' monthly statements.

One view per operation: parse input, check permission, call one selector or service,
serialize output. Tenancy is decided in billing.selectors from ``request.caller``.
Amounts go out twice: exact integer micro-units (``*_micros``) and the same as
decimal text (``"25.00"``). They come in as decimal text only (``"12.34"``), never as
JSON numbers, which many clients turn into binary floats.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.fields import empty
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from billing import documents, invoicing, pricebook, selectors, services
from billing.models import Account, Invoice, Price
from core.converters import BIGINT_MAX, query_id
from core.errors import IdempotencyConflict, InvalidInput, NotFound
from core.idempotency import idempotency_key, idempotent
from core.money import CURRENCIES, Money, MoneyError
from core.pagination import CursorPagination, page_serializer, paginated_response
from core.permissions import IsPlatformFinance
from core.schema import ErrorSerializer, error_responses
from core.tenancy import Caller, get_caller

logger = logging.getLogger(__name__)

MAX_REASON_LENGTH = 500
# Signed decimal digits, no exponent: "1e30" or "0x10" is not an amount anyone types.
_DECIMAL_TEXT = re.compile(r"^[+-]?\d{1,40}(?:\.\d{1,40})?$")
_MAX_DB_ID = BIGINT_MAX
_SIDE_NAMES = {"D": "debit", "C": "credit"}


# --- fields -----------------------------------------------------------------


@extend_schema_field(OpenApiTypes.STR)
class MoneyTextField(serializers.Field):
    """Read only: ``<micros_attr>`` of the object as exact decimal text in the
    object's ``currency`` (``"25.00"``, ``"0.000125"``); null stays null."""

    def __init__(self, micros_attr: str, **kwargs: Any) -> None:
        self.micros_attr = micros_attr
        kwargs.update(source="*", read_only=True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str | None:
        micros = getattr(value, self.micros_attr)
        return None if micros is None else Money(micros, value.currency).format()


@extend_schema_field({"type": "string", "enum": ["debit", "credit"]})
class SideField(serializers.Field):
    """``"debit"`` / ``"credit"`` on the wire, ``"D"`` / ``"C"`` in the ledger."""

    default_error_messages = {"invalid": 'must be "debit" or "credit"'}

    def to_internal_value(self, data: Any) -> str:
        if data == "debit":
            return "D"
        if data == "credit":
            return "C"
        self.fail("invalid")

    def to_representation(self, value: Any) -> str:
        return _SIDE_NAMES.get(value, value)


# Documented without an enum: drf-spectacular names enums after fields, and the same
# set under two names ("side", "normal_side") is a schema warning.
@extend_schema_field({"type": "string", "example": "credit"})
class NormalSideField(SideField):
    """``"debit"`` or ``"credit"``: the side on which the balance grows."""


@extend_schema_field({"type": "string", "example": "12.34"})
class DecimalTextField(serializers.Field):
    """Input: an amount as decimal text. Checked for shape here; turned into
    micro-units (``Money.parse``) where the currency is known."""

    default_error_messages = {
        "type": 'must be a decimal string such as "12.34", not a JSON {kind}',
        "format": 'must be a decimal string such as "12.34" (digits, an optional point, '
        "no exponent)",
        "null_characters": "must not contain NUL characters",
    }

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("type", kind=type(data).__name__)
        if "\x00" in data:
            self.fail("null_characters")
        text = data.strip()
        if not _DECIMAL_TEXT.match(text):
            self.fail("format")
        return text


def _parse_amount(text: str, currency: str, *, allow_zero: bool = False) -> int:
    """Micro-units of ``text`` in ``currency``; a MoneyError says what is wrong."""
    amount = Money.parse(text, currency).amount_micros  # at most 6 places, bounded
    if amount < 0 or (amount == 0 and not allow_zero):
        raise MoneyError("must not be negative" if allow_zero else "must be positive")
    return amount


# --- output serializers -----------------------------------------------------


class AccountSerializer(serializers.ModelSerializer):
    organization = serializers.IntegerField(
        source="organization_id",
        allow_null=True,
        read_only=True,
        help_text="the owning organization; null for a platform account",
    )
    normal_side = NormalSideField(
        read_only=True, help_text="debit or credit: the side on which the balance grows"
    )
    overdraft_limit_micros = serializers.IntegerField(
        allow_null=True,
        read_only=True,
        help_text="how far the balance may go below zero; null: no limit",
    )
    overdraft_limit = MoneyTextField("overdraft_limit_micros", allow_null=True)
    posted_micros = serializers.IntegerField(read_only=True)
    posted = MoneyTextField("posted_micros")
    pending_micros = serializers.IntegerField(read_only=True, help_text="reserved by pending holds")
    pending = MoneyTextField("pending_micros")
    available_micros = serializers.IntegerField(read_only=True, help_text="posted minus pending")
    available = MoneyTextField("available_micros")

    class Meta:
        model = Account
        fields = [
            "id",
            "organization",
            "kind",
            "currency",
            "normal_side",
            "overdraft_limit_micros",
            "overdraft_limit",
            "posted_micros",
            "posted",
            "pending_micros",
            "pending",
            "available_micros",
            "available",
            "created_at",
        ]
        read_only_fields = fields


class JournalLineSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    position = serializers.IntegerField(
        source="entry_id", read_only=True, help_text="the journal entry's event position"
    )
    transfer_id = serializers.CharField(read_only=True, help_text="or the hold's id")
    kind = serializers.CharField(read_only=True, help_text="grant, adjustment, hold, …")
    description = serializers.CharField(read_only=True)
    account = serializers.IntegerField(source="account_id", read_only=True)
    side = SideField(read_only=True)
    amount_micros = serializers.IntegerField(read_only=True)
    amount = MoneyTextField("amount_micros")
    currency = serializers.CharField(read_only=True)
    recorded_at = serializers.DateTimeField(read_only=True)


class JournalLegSerializer(serializers.Serializer):
    account = serializers.IntegerField(source="account_id", read_only=True)
    side = SideField(read_only=True)
    amount_micros = serializers.IntegerField(read_only=True)
    amount = MoneyTextField("amount_micros")


class JournalEntrySerializer(serializers.Serializer):
    position = serializers.IntegerField(read_only=True)
    transfer_id = serializers.CharField(read_only=True)
    kind = serializers.CharField(read_only=True)
    currency = serializers.CharField(read_only=True)
    description = serializers.CharField(read_only=True)
    recorded_at = serializers.DateTimeField(read_only=True)
    legs = JournalLegSerializer(many=True, read_only=True)


class TrialBalanceRowSerializer(serializers.Serializer):
    account = serializers.IntegerField(source="account_id", read_only=True)
    organization = serializers.IntegerField(
        source="organization_id", allow_null=True, read_only=True
    )
    owner = serializers.CharField(read_only=True, help_text='organization name or "platform"')
    kind = serializers.CharField(read_only=True)
    currency = serializers.CharField(read_only=True)
    normal_side = NormalSideField(read_only=True, help_text="debit or credit")
    debits_micros = serializers.IntegerField(read_only=True)
    debits = MoneyTextField("debits_micros")
    credits_micros = serializers.IntegerField(read_only=True)
    credits = MoneyTextField("credits_micros")
    balance_micros = serializers.IntegerField(
        read_only=True, help_text="posted balance on the account's normal side"
    )
    balance = MoneyTextField("balance_micros")


class TrialBalanceTotalSerializer(serializers.Serializer):
    currency = serializers.CharField(read_only=True)
    debits_micros = serializers.IntegerField(read_only=True)
    debits = MoneyTextField("debits_micros")
    credits_micros = serializers.IntegerField(read_only=True)
    credits = MoneyTextField("credits_micros")
    balanced = serializers.BooleanField(read_only=True, help_text="debits equal credits")


class TrialBalanceSerializer(serializers.Serializer):
    position = serializers.IntegerField(
        read_only=True, help_text="the newest ledger event the report reflects"
    )
    accounts = TrialBalanceRowSerializer(source="rows", many=True, read_only=True)
    totals = TrialBalanceTotalSerializer(many=True, read_only=True)


# --- input serializers ------------------------------------------------------


class _ListSerializer(serializers.ListSerializer):
    """Errors name their place the way the API does elsewhere: ``legs`` for the list
    as a whole (not DRF's ``legs.non_field_errors``) and ``legs[1].side`` for an item
    (DRF 3.18 keys item errors by index, which core.errors would spell ``legs.1``)."""

    def run_validation(self, data: Any = empty) -> Any:
        try:
            return super().run_validation(data)
        except serializers.ValidationError as exc:
            detail: Any = exc.detail
            whole = api_settings.NON_FIELD_ERRORS_KEY
            if isinstance(detail, dict) and set(detail) == {whole}:
                raise serializers.ValidationError(detail[whole]) from None
            if isinstance(detail, dict) and all(isinstance(k, int) for k in detail):
                items = [detail.get(index, {}) for index in range(max(detail) + 1)]
                raise serializers.ValidationError(items) from None
            raise


class AdjustmentLegInputSerializer(serializers.Serializer):
    class Meta:
        list_serializer_class = _ListSerializer

    account = serializers.IntegerField(min_value=1, max_value=_MAX_DB_ID)
    side = SideField()
    amount = DecimalTextField(help_text="positive, at most 6 decimals")


class AdjustmentInputSerializer(serializers.Serializer):
    currency = serializers.ChoiceField(choices=sorted(CURRENCIES))
    # CharField refuses NUL characters and blank text on its own.
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH)
    legs = AdjustmentLegInputSerializer(  # type: ignore[call-arg]  # the stubs lag DRF 3.18
        many=True, min_length=2, max_length=services.MAX_LEGS
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        currency = attrs["currency"]
        legs = attrs["legs"]
        problems: list[dict[str, list[str]]] = [{} for _ in legs]
        known = selectors.account_currencies(account_ids=[leg["account"] for leg in legs])
        first_leg_of: dict[int, int] = {}
        debits = credits = 0
        for index, leg in enumerate(legs):
            account_id = leg["account"]
            if account_id not in known:
                problems[index]["account"] = [f"no account {account_id}"]
            elif known[account_id] != currency:
                problems[index]["account"] = [
                    f"account {account_id} is kept in {known[account_id]}, not {currency}"
                ]
            elif account_id in first_leg_of:
                problems[index]["account"] = [
                    f"account {account_id} is already in legs[{first_leg_of[account_id]}]"
                ]
            first_leg_of.setdefault(account_id, index)
            try:
                leg["amount_micros"] = _parse_amount(leg["amount"], currency)
            except MoneyError as exc:
                problems[index]["amount"] = [str(exc)]
                continue
            if leg["side"] == "D":
                debits += leg["amount_micros"]
            else:
                credits += leg["amount_micros"]
        if any(problems):
            raise serializers.ValidationError({"legs": problems})
        if debits != credits:
            raise serializers.ValidationError(
                {
                    "legs": [
                        f"debits ({Money(debits, currency).format()}) must equal "
                        f"credits ({Money(credits, currency).format()})"
                    ]
                }
            )
        return attrs


class CreditLimitInputSerializer(serializers.Serializer):
    amount = DecimalTextField(
        allow_null=True,
        help_text="how far the buyer's credit may go below zero; "
        '"0" for prepaid only; null for no limit at all',
    )
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH)

    def validate_amount(self, value: str | None) -> int | None:
        """Micro-units in the account's currency (``context["currency"]``)."""
        if value is None:
            return None
        try:
            return _parse_amount(value, self.context["currency"], allow_zero=True)
        except MoneyError as exc:
            raise serializers.ValidationError(str(exc)) from None


# --- query parameters -------------------------------------------------------


def _query_id(request: Request, name: str) -> int | None:
    return query_id(request, name)


def _query_datetime(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = parse_datetime(raw)
    except ValueError:
        value = None
    if value is None:
        raise InvalidInput(
            f"{name} must be an ISO 8601 date and time, e.g. 2025-01-31T00:00:00Z",
            details={"parameter": name},
        )
    if value.tzinfo is None:
        raise InvalidInput(
            f"{name} must carry a time zone (Z or +00:00): periods are in UTC",
            details={"parameter": name},
        )
    return value.astimezone(UTC)


def query_currency(request: Request) -> str | None:
    raw = request.query_params.get("currency")
    if raw is None:
        return None
    if raw not in CURRENCIES:
        raise InvalidInput(
            f"currency must be one of {', '.join(sorted(CURRENCIES))}",
            details={"parameter": "currency"},
        )
    return raw


def actor_for(caller: Caller) -> str:
    return f"org:{caller.organization.pk}:{caller.rate_limit_key}"


def adjustment_transfer_id(*, organization_id: int, key: str) -> str:
    """The ledger transfer id behind an adjustment's ``Idempotency-Key``, so that the
    ledger itself refuses to post one key twice, whatever happens to the stored
    response. A key the transfer-id alphabet cannot carry is hashed, under another
    prefix so that it can never equal a key used as it is."""
    verbatim = f"adj:{organization_id}:{key}"
    if services.TRANSFER_ID.match(verbatim):
        return verbatim
    return f"adjh:{organization_id}:{hashlib.sha256(key.encode()).hexdigest()}"


# --- views ------------------------------------------------------------------

_ACCOUNT_ID = OpenApiParameter("account_id", OpenApiTypes.INT, OpenApiParameter.PATH)


class AccountListApi(APIView):
    @extend_schema(
        operation_id="accounts_list",
        summary="Your organization's accounts with their balances, newest first",
        description="Operator finance staff also see the platform's accounts.",
        tags=["billing"],
        responses={200: page_serializer(AccountSerializer), **error_responses(400, 401, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        return paginated_response(
            queryset=selectors.accounts_for_caller(caller=caller),
            serializer_class=AccountSerializer,
            request=request,
            view=self,
        )


class AccountDetailApi(APIView):
    @extend_schema(
        operation_id="accounts_retrieve",
        summary="One account with its balance",
        tags=["billing"],
        parameters=[_ACCOUNT_ID],
        responses={200: AccountSerializer, **error_responses(401, 404, 429)},
    )
    def get(self, request: Request, account_id: int) -> Response:
        caller = get_caller(request)
        account = selectors.account_get(caller=caller, account_id=account_id)
        return Response(AccountSerializer(account).data)


class AccountCreditLimitApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="accounts_credit_limit_set",
        summary="Set a buyer's credit limit (operator finance)",
        description="How far a buyer's prepaid credit account may go below zero.",
        tags=["billing"],
        parameters=[_ACCOUNT_ID],
        request=CreditLimitInputSerializer,
        responses={200: AccountSerializer, **error_responses(400, 401, 403, 404, 409, 422, 429)},
    )
    @idempotent()
    def post(self, request: Request, account_id: int) -> Response:
        caller = get_caller(request)
        account = selectors.account_get(caller=caller, account_id=account_id)
        given = CreditLimitInputSerializer(
            data=request.data, context={"currency": account.currency}
        )
        given.is_valid(raise_exception=True)
        services.account_set_overdraft_limit(
            account=account,
            limit_micros=given.validated_data["amount"],
            reason=given.validated_data["reason"],
            actor=actor_for(caller),
        )
        account = selectors.account_get(caller=caller, account_id=account.pk)
        return Response(AccountSerializer(account).data)


class JournalLineListApi(APIView):
    @extend_schema(
        operation_id="journal_list",
        summary="Journal lines on your accounts, newest first",
        description="One line per posting. The period is half-open: since ≤ recorded_at "
        "< until, both with a time zone. Operator finance staff see the whole journal.",
        tags=["billing"],
        parameters=[
            OpenApiParameter("account", OpenApiTypes.INT, description="one account only"),
            OpenApiParameter("since", OpenApiTypes.DATETIME, description="inclusive"),
            OpenApiParameter("until", OpenApiTypes.DATETIME, description="exclusive"),
        ],
        responses={
            200: page_serializer(JournalLineSerializer),
            **error_responses(400, 401, 404, 429),
        },
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        account_id = _query_id(request, "account")
        since = _query_datetime(request, "since")
        until = _query_datetime(request, "until")
        if since is not None and until is not None and since >= until:
            raise InvalidInput(
                "until must be later than since (the period is [since, until))",
                details={"parameter": "until"},
            )
        lines = selectors.journal_lines(
            caller=caller, account_id=account_id, since=since, until=until
        )
        return paginated_response(
            queryset=lines, serializer_class=JournalLineSerializer, request=request, view=self
        )


class AdjustmentCreateApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="journal_adjustments_create",
        summary="Post a manual journal entry (operator finance)",
        description="Two or more legs whose debits equal their credits, with a reason "
        "on the record. Replaying the same Idempotency-Key and body returns the first "
        "entry; a limit the entry would break is a 402.",
        tags=["billing"],
        request=AdjustmentInputSerializer,
        responses={
            201: JournalEntrySerializer,
            402: OpenApiResponse(
                response=ErrorSerializer, description="an account would fall past its limit"
            ),
            **error_responses(400, 401, 403, 409, 413, 422, 429),
        },
    )
    # Not atomic: the ledger runs (and retries) its own transaction, and the transfer
    # id derived from the key makes the effect idempotent if a claim is taken over.
    @idempotent(required=True, atomic=False)
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        key = idempotency_key(request, required=True)
        assert key is not None  # required=True: a missing key was a 400 already
        given = AdjustmentInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        result = services.adjustment_post(
            transfer_id=adjustment_transfer_id(organization_id=caller.organization.pk, key=key),
            currency=data["currency"],
            legs=[(leg["account"], leg["side"], leg["amount_micros"]) for leg in data["legs"]],
            reason=data["reason"],
            actor=actor_for(caller),
        )
        assert result.position is not None  # raise_for: an accepted entry has one
        entry = selectors.journal_entry_get(position=result.position)
        # The ledger compares amounts and accounts on a replay, not the reason.
        if result.status == "replayed" and entry.description != data["reason"]:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used for an adjustment with another reason",
                details={"header": "Idempotency-Key"},
            )
        return Response(JournalEntrySerializer(entry).data, status=status.HTTP_201_CREATED)


class TrialBalanceApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="trial_balance_retrieve",
        summary="The platform's trial balance (operator finance)",
        description="Posted debits and credits of every account, with totals per "
        "currency; total debits equal total credits.",
        tags=["billing"],
        parameters=[
            OpenApiParameter(
                "currency",
                OpenApiTypes.STR,
                enum=sorted(CURRENCIES),
                description="one currency only",
            )
        ],
        responses={200: TrialBalanceSerializer, **error_responses(400, 401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        report = selectors.trial_balance(currency=query_currency(request))
        return Response(TrialBalanceSerializer(report).data)


# === the price book, invoices, credit notes, billing profiles, statements ===========
#
# Who may do what: anyone (no key needed) reads the public prices in force; members
# ask for a fine-tune estimate, read their organization's invoices, credit notes,
# billing profile and (providers) statements; the operator's finance staff read every
# organization's, schedule price changes, set billing profiles and move invoices
# along their lifecycle. Another organization's ids answer 404.


class _MoneyText(serializers.Field):
    """Read only: ``micros_attr`` of the object as exact decimal text in the currency
    found at the dotted ``currency_path`` (lines and entries carry their invoice's)."""

    def __init__(self, micros_attr: str, currency_path: str = "currency", **kwargs: Any) -> None:
        self.micros_attr = micros_attr
        self.currency_path = currency_path
        kwargs.update(source="*", read_only=True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str | None:
        micros = getattr(value, self.micros_attr)
        currency: Any = value
        for part in self.currency_path.split("."):
            currency = getattr(currency, part)
        return None if micros is None else Money(micros, currency).format()


MoneyText = extend_schema_field({"type": "string", "example": "12.34", "nullable": True})(
    _MoneyText
)


class _ChoiceText(serializers.CharField):
    """A plain string in the schema: an enum here would collide with other apps'
    enums of the same field name (``status``, ``kind``) and warn."""


# --- the price book ---------------------------------------------------------------


class PriceSerializer(serializers.Serializer):
    item = serializers.CharField(read_only=True)
    tier = serializers.CharField(read_only=True, help_text="model size tier, or empty")
    variant = serializers.CharField(
        read_only=True, help_text="training type, prompt or completion, or empty"
    )
    currency = serializers.CharField(read_only=True)
    value = serializers.IntegerField(read_only=True, help_text="an integer in `unit`")
    unit = serializers.SerializerMethodField()
    amount = serializers.SerializerMethodField(
        help_text="value as exact decimal text of the currency, for money items; else null"
    )
    effective_from = serializers.DateTimeField(read_only=True)

    def get_unit(self, row: Any) -> str:
        return selectors.PRICE_UNITS[row.item]

    def get_amount(self, row: Any) -> str | None:
        if row.item not in selectors.MONEY_ITEMS:
            return None
        return Money(row.value, row.currency).format()


class PriceVersionSerializer(PriceSerializer):
    id = serializers.IntegerField(read_only=True)
    state = serializers.SerializerMethodField(
        help_text="scheduled (not yet in force), in_force, or superseded"
    )
    public = serializers.BooleanField(read_only=True)
    reason = serializers.CharField(read_only=True)
    created_by = serializers.CharField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)

    def get_state(self, row: Any) -> str:
        if row.effective_from > self.context["now"]:
            return "scheduled"
        return "in_force" if row.pk in self.context["in_force"] else "superseded"


class PriceScheduleInputSerializer(serializers.Serializer):
    item = serializers.CharField(max_length=32)
    tier = serializers.CharField(max_length=32, allow_blank=True, default="")
    variant = serializers.CharField(max_length=32, allow_blank=True, default="")
    value = serializers.IntegerField(
        help_text="in the item's unit: micros (per 1M tokens, per job), basis points "
        "(gpu_lease_fee) or days (welcome_credit_days)"
    )
    effective_from = serializers.DateTimeField(
        help_text="with a time zone; at least 15 minutes from now"
    )
    currency = serializers.CharField(max_length=3, required=False)
    public = serializers.BooleanField(default=True)
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH)

    def validate_effective_from(self, value: datetime) -> datetime:
        raw = self.initial_data.get("effective_from")
        if isinstance(raw, str) and (parsed := parse_datetime(raw)) and parsed.tzinfo is None:
            raise serializers.ValidationError("must carry a time zone (Z or +00:00)")
        return value.astimezone(UTC)


class FineTuneEstimateInputSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    training_type = serializers.CharField(
        max_length=32, help_text="lora-sft, lora-dpo, full-sft or full-dpo"
    )
    training_tokens = serializers.IntegerField(min_value=0)
    epochs = serializers.IntegerField(min_value=1, default=1)
    validation_tokens = serializers.IntegerField(min_value=0, default=0)
    evaluations = serializers.IntegerField(min_value=0, default=0)


class FineTuneEstimateSerializer(serializers.Serializer):
    model = serializers.CharField()
    tier = serializers.CharField(help_text="the price book's size tier of the model")
    training_type = serializers.CharField()
    billable_tokens = serializers.IntegerField(
        help_text="training tokens x epochs + validation tokens x evaluations"
    )
    currency = serializers.CharField()
    rate_micros = serializers.IntegerField(help_text="per 1M tokens")
    rate = MoneyText("rate_micros")
    usage_micros = serializers.IntegerField(help_text="billable tokens at the rate")
    usage = MoneyText("usage_micros")
    minimum_micros = serializers.IntegerField(help_text="the per-job minimum")
    minimum = MoneyText("minimum_micros")
    amount_micros = serializers.IntegerField(help_text="the larger of usage and the minimum")
    amount = MoneyText("amount_micros")
    minimum_applied = serializers.BooleanField()
    available_micros = serializers.IntegerField(
        help_text="the organization's available credit (credit limit included)"
    )
    available = MoneyText("available_micros")
    covered = serializers.BooleanField(help_text="available credit covers the amount")
    priced_at = serializers.DateTimeField()


class PricePublicListApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="prices_list",
        summary="The public prices in force now (no API key needed)",
        description="One row per price: fine-tune and inference rates per 1M tokens by "
        "model size tier, the GPU lease platform fee, the per-job fine-tune minimum and "
        "the welcome credit. Values are integers in each row's unit; money rows also "
        "as exact decimal text.",
        tags=["prices"],
        responses={
            200: inline_serializer(
                "PublicPrices",
                {"at": serializers.DateTimeField(), "prices": PriceSerializer(many=True)},
            ),
            **error_responses(401),
        },
    )
    def get(self, request: Request) -> Response:
        at = timezone.now()
        rows = selectors.prices_public(at=at, currency=settings.TANDEM_CURRENCY)
        return Response({"at": at, "prices": PriceSerializer(rows, many=True).data})


class PriceScheduleListApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="prices_schedule_list",
        summary="Every version of every price: past, in force and scheduled (operator finance)",
        tags=["prices"],
        parameters=[
            OpenApiParameter("item", OpenApiTypes.STR, description="one item only"),
            OpenApiParameter("currency", OpenApiTypes.STR, enum=sorted(CURRENCIES)),
        ],
        responses={
            200: page_serializer(PriceVersionSerializer),
            **error_responses(400, 401, 403, 429),
        },
    )
    def get(self, request: Request) -> Response:
        item = request.query_params.get("item")
        if item is not None and item not in Price.Item.values:
            raise InvalidInput(
                f"item must be one of {', '.join(Price.Item.values)}",
                details={"parameter": "item"},
            )
        currency = query_currency(request)
        now = timezone.now()
        in_force = selectors.price_ids_in_force(
            at=now, currency=currency or settings.TANDEM_CURRENCY
        )
        paginator = CursorPagination()
        page = paginator.paginate_queryset(
            selectors.price_versions(item=item, currency=currency), request, view=self
        )
        data = PriceVersionSerializer(
            page, many=True, context={"now": now, "in_force": in_force}
        ).data
        return paginator.get_paginated_response(data)


class PriceScheduleCreateApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="prices_schedule_create",
        summary="Schedule a price change (operator finance)",
        description="A new version of one price, in force from effective_from — at "
        "least 15 minutes ahead, so usage already rated is never re-priced. Versions are "
        "never edited; a mistake is corrected by scheduling another.",
        tags=["prices"],
        request=PriceScheduleInputSerializer,
        responses={
            201: PriceVersionSerializer,
            **error_responses(400, 401, 403, 409, 422, 429),
        },
    )
    @idempotent(required=True)
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = PriceScheduleInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        price = pricebook.price_schedule(
            item=data["item"],
            tier=data["tier"],
            variant=data["variant"],
            value=data["value"],
            effective_from=data["effective_from"],
            currency=data.get("currency"),
            reason=data["reason"],
            public=data["public"],
            actor=actor_for(caller),
        )
        body = PriceVersionSerializer(
            price, context={"now": timezone.now(), "in_force": set()}
        ).data
        return Response(body, status=status.HTTP_201_CREATED)


class FineTuneEstimateApi(APIView):
    @extend_schema(
        operation_id="prices_fine_tune_estimate",
        summary="What a fine-tune would cost, and whether your credit covers it",
        description="(training tokens x epochs + validation tokens x evaluations) x the "
        "rate of the model's size tier and training type, at least the per-job minimum, "
        "at today's prices. Nothing is reserved.",
        tags=["prices"],
        request=FineTuneEstimateInputSerializer,
        responses={200: FineTuneEstimateSerializer, **error_responses(400, 401, 429)},
    )
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = FineTuneEstimateInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        quote = pricebook.fine_tune_quote(
            **given.validated_data, organization_id=caller.organization.pk
        )
        return Response(FineTuneEstimateSerializer(quote).data)


# --- invoices ---------------------------------------------------------------------


class InvoiceLineEntrySerializer(serializers.Serializer):
    position = serializers.IntegerField(
        source="entry_position", read_only=True, help_text="the journal entry's event position"
    )
    transfer_id = serializers.CharField(read_only=True)
    amount_micros = serializers.IntegerField(
        read_only=True, help_text="of that entry's charge, what this line carries"
    )
    amount = MoneyText("amount_micros", "line.invoice.currency")


class InvoiceLineSerializer(serializers.Serializer):
    ordinal = serializers.IntegerField(read_only=True)
    product = _ChoiceText(read_only=True, help_text="fine_tune, inference, gpu_lease or other")
    description = serializers.CharField(read_only=True)
    job = serializers.CharField(read_only=True)
    model = serializers.CharField(read_only=True)
    gpu_model = serializers.CharField(read_only=True)
    quantity = serializers.IntegerField(read_only=True)
    unit = serializers.CharField(read_only=True, help_text="tokens, gpu_seconds or item")
    price_unit = serializers.IntegerField(
        read_only=True,
        help_text="the quantity the unit price is for (1,000,000 tokens, "
        "3,600 GPU-seconds, 1 item)",
    )
    unit_price_micros = serializers.IntegerField(read_only=True)
    unit_price = MoneyText("unit_price_micros", "invoice.currency")
    exact_micros = serializers.IntegerField(read_only=True, help_text="the journal's exact amount")
    exact = MoneyText("exact_micros", "invoice.currency")
    amount_micros = serializers.IntegerField(read_only=True, help_text="rounded to cents")
    amount = MoneyText("amount_micros", "invoice.currency")
    entries = InvoiceLineEntrySerializer(many=True, read_only=True)


class InvoiceSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    number = serializers.CharField(read_only=True, allow_null=True, help_text="null: a draft")
    organization = serializers.IntegerField(source="organization_id", read_only=True)
    kind = _ChoiceText(read_only=True, help_text="monthly or job")
    status = _ChoiceText(
        read_only=True, help_text="draft, open, past_due, paid, void or uncollectible"
    )
    currency = serializers.CharField(read_only=True)
    period_start = serializers.DateTimeField(read_only=True)
    period_end = serializers.DateTimeField(read_only=True, help_text="exclusive")
    job = serializers.CharField(read_only=True)
    issuer = serializers.CharField(read_only=True)
    subtotal_exact_micros = serializers.IntegerField(read_only=True)
    subtotal_exact = MoneyText("subtotal_exact_micros")
    subtotal_micros = serializers.IntegerField(read_only=True)
    subtotal = MoneyText("subtotal_micros")
    rounding_micros = serializers.IntegerField(read_only=True)
    rounding = MoneyText("rounding_micros")
    tax_rate_bps = serializers.IntegerField(read_only=True)
    tax_micros = serializers.IntegerField(read_only=True)
    tax = MoneyText("tax_micros")
    total_micros = serializers.IntegerField(read_only=True)
    total = MoneyText("total_micros")
    prepaid_applied_micros = serializers.IntegerField(read_only=True)
    prepaid_applied = MoneyText("prepaid_applied_micros")
    amount_due_micros = serializers.IntegerField(read_only=True)
    amount_due = MoneyText("amount_due_micros")
    amount_paid_micros = serializers.IntegerField(read_only=True)
    amount_paid = MoneyText("amount_paid_micros")
    credited_micros = serializers.IntegerField(read_only=True, help_text="credit notes, tax in")
    credited = MoneyText("credited_micros")
    written_off_micros = serializers.IntegerField(read_only=True)
    written_off = MoneyText("written_off_micros")
    generated_at = serializers.DateTimeField(read_only=True)
    finalized_at = serializers.DateTimeField(read_only=True, allow_null=True)
    due_at = serializers.DateTimeField(read_only=True, allow_null=True)
    closed_at = serializers.DateTimeField(read_only=True, allow_null=True)
    payment_reference = serializers.CharField(read_only=True)
    document_sha256 = serializers.CharField(
        read_only=True, help_text="of the canonical JSON document, recorded at finalization"
    )


class InvoiceDetailSerializer(InvoiceSerializer):
    outstanding_micros = serializers.SerializerMethodField(
        help_text="what is still owed on a finalized invoice; null for a draft"
    )
    outstanding = serializers.SerializerMethodField()
    lines = InvoiceLineSerializer(many=True, read_only=True)
    html = serializers.SerializerMethodField(help_text="the rendered invoice (HTML)")
    pdf = serializers.SerializerMethodField(help_text="the rendered invoice (PDF)")

    def get_outstanding_micros(self, invoice: Invoice) -> int | None:
        if invoice.status == Invoice.Status.DRAFT:
            return None
        return invoicing.outstanding(invoice)

    @extend_schema_field({"type": "string", "nullable": True})
    def get_outstanding(self, invoice: Invoice) -> str | None:
        micros = self.get_outstanding_micros(invoice)
        return None if micros is None else Money(micros, invoice.currency).format()

    def get_html(self, invoice: Invoice) -> str:
        return f"/api/v1/invoices/{invoice.pk}.html"

    def get_pdf(self, invoice: Invoice) -> str:
        return f"/api/v1/invoices/{invoice.pk}.pdf"


class CreditNoteSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    invoice = serializers.IntegerField(source="invoice_id", read_only=True)
    number = serializers.CharField(read_only=True)
    currency = serializers.CharField(read_only=True)
    amount_micros = serializers.IntegerField(read_only=True, help_text="before tax")
    amount = MoneyText("amount_micros")
    tax_micros = serializers.IntegerField(read_only=True)
    tax = MoneyText("tax_micros")
    total_micros = serializers.IntegerField(read_only=True)
    total = MoneyText("total_micros")
    to_receivable_micros = serializers.IntegerField(
        read_only=True, help_text="taken off what the buyer owed on the invoice"
    )
    to_receivable = MoneyText("to_receivable_micros")
    to_credit_micros = serializers.IntegerField(
        read_only=True, help_text="given back as prepaid credit"
    )
    to_credit = MoneyText("to_credit_micros")
    reason = serializers.CharField(read_only=True)
    entry_position = serializers.IntegerField(
        read_only=True, help_text="the journal entry that posted it"
    )
    issued_at = serializers.DateTimeField(read_only=True)
    issued_by = serializers.CharField(read_only=True)


class CreditNoteInputSerializer(serializers.Serializer):
    amount = DecimalTextField(help_text="before tax, whole cents; the tax on it is added")
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH)


class ReasonInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH)


class OptionalReasonInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_REASON_LENGTH, required=False, default="")


class MarkPaidInputSerializer(serializers.Serializer):
    payment_reference = serializers.CharField(
        max_length=255, help_text="the bank transfer's reference, or another payment's id"
    )


class JobInvoiceInputSerializer(serializers.Serializer):
    organization = serializers.IntegerField(min_value=1, max_value=_MAX_DB_ID)
    job = serializers.CharField(max_length=200, help_text="the fine-tune job's id")


class BillingProfileSerializer(serializers.Serializer):
    organization = serializers.IntegerField(source="organization_id", read_only=True)
    legal_name = serializers.CharField(
        max_length=200,
        allow_blank=True,
        default="",
        help_text="empty: the organization's name",
    )
    address = serializers.CharField(
        max_length=invoicing.MAX_ADDRESS_LENGTH, allow_blank=True, default=""
    )
    tax_id = serializers.CharField(max_length=64, allow_blank=True, default="")
    tax_rate_bps = serializers.IntegerField(help_text="basis points, 0 to 10,000 (1,900 = 19%)")
    tax_label = serializers.CharField(max_length=32, allow_blank=True, default="Tax")
    updated_at = serializers.DateTimeField(read_only=True, allow_null=True)


def _query_period(request: Request, name: str = "period") -> date | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    return _period(raw, name)


def _period(raw: str, name: str = "period") -> date:
    try:
        year, month = (int(part) for part in raw.split("-"))
        if len(raw) != 7 or year < 2000:
            raise ValueError(raw)
        return date(year, month, 1)
    except ValueError:
        raise InvalidInput(
            f"{name} must be a month as YYYY-MM (e.g. 2026-10), not {raw[:20]!r}",
            details={"parameter": name},
        ) from None


def _query_choice(request: Request, name: str, choices: list[str]) -> str | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if raw not in choices:
        raise InvalidInput(
            f"{name} must be one of {', '.join(choices)}", details={"parameter": name}
        )
    return raw


_INVOICE_ID = OpenApiParameter("invoice_id", OpenApiTypes.INT, OpenApiParameter.PATH)
_ORGANIZATION_ID = OpenApiParameter("organization_id", OpenApiTypes.INT, OpenApiParameter.PATH)


class InvoiceListApi(APIView):
    @extend_schema(
        operation_id="invoices_list",
        summary="Your organization's invoices, drafts included, newest first",
        description="Operator finance staff see every organization's (organization= "
        "narrows it to one).",
        tags=["invoices"],
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=Invoice.Status.values),
            OpenApiParameter("kind", OpenApiTypes.STR, enum=Invoice.Kind.values),
            OpenApiParameter(
                "period", OpenApiTypes.STR, description="YYYY-MM: periods starting that month"
            ),
            OpenApiParameter(
                "organization", OpenApiTypes.INT, description="operator finance: one org"
            ),
        ],
        responses={200: page_serializer(InvoiceSerializer), **error_responses(400, 401, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        invoices = selectors.invoices_for_caller(
            caller=caller,
            status=_query_choice(request, "status", Invoice.Status.values),
            kind=_query_choice(request, "kind", Invoice.Kind.values),
            period=_query_period(request),
            organization_id=_query_id(request, "organization"),
        )
        return paginated_response(
            queryset=invoices, serializer_class=InvoiceSerializer, request=request, view=self
        )


class InvoiceDraftApi(APIView):
    @extend_schema(
        operation_id="invoices_draft",
        summary="This month's invoice so far: the draft, recomputed from the journal now",
        description="period=YYYY-MM for another month not yet begun to be invoiced "
        "(e.g. last month during its grace days); a month already finalized answers "
        "its final invoice. 404 when the month has charged nothing yet.",
        tags=["invoices"],
        parameters=[OpenApiParameter("period", OpenApiTypes.STR, description="YYYY-MM")],
        responses={200: InvoiceDetailSerializer, **error_responses(400, 401, 404, 429)},
    )
    def get(self, request: Request) -> Response:
        caller = get_caller(request)
        now = timezone.now()
        period = _query_period(request) or date(now.year, now.month, 1)
        invoice = invoicing.invoice_draft_current(
            organization=caller.organization, period=period, now=now
        )
        if invoice is None:
            raise NotFound(
                f"nothing was charged to {caller.organization.name} in {period:%Y-%m} yet",
                details={"period": f"{period:%Y-%m}"},
            )
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice.pk)
        return Response(InvoiceDetailSerializer(invoice).data)


class InvoiceDetailApi(APIView):
    @extend_schema(
        operation_id="invoices_retrieve",
        summary="One invoice: its lines and the journal entries each line carries",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        responses={200: InvoiceDetailSerializer, **error_responses(401, 404, 429)},
    )
    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = selectors.invoice_get(caller=get_caller(request), invoice_id=invoice_id)
        return Response(InvoiceDetailSerializer(invoice).data)


class _DocumentRenderer(BaseRenderer):
    """The one type a document endpoint answers, for content negotiation; the view
    answers the bytes itself, and errors go out as JSON (below)."""

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        return JSONRenderer().render(data)


class _PdfRenderer(_DocumentRenderer):
    media_type = "application/pdf"
    format = "pdf"
    charset = None


class _HtmlRenderer(_DocumentRenderer):
    media_type = "text/html"
    format = "html"


class _InvoiceDocumentApi(APIView):
    content_type = ""

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        if isinstance(response, Response):  # an error: always in the API's JSON shape
            response.accepted_renderer = JSONRenderer()
            response.accepted_media_type = "application/json"
        return response

    def _answer(self, request: Request, invoice_id: int, body: Callable[[Invoice], bytes]) -> Any:
        invoice = selectors.invoice_get(caller=get_caller(request), invoice_id=invoice_id)
        response = HttpResponse(body(invoice), content_type=self.content_type)
        name = invoice.number or f"draft-{invoice.pk}"
        extension = "pdf" if self.content_type == "application/pdf" else "html"
        response["Content-Disposition"] = f'inline; filename="{name}.{extension}"'
        response["ETag"] = f'"{invoice.document_sha256}"'
        return response


def _document_errors(*codes: int) -> dict[Any, Any]:
    return {
        (code, "application/json"): response for code, response in error_responses(*codes).items()
    }


class InvoiceHtmlApi(_InvoiceDocumentApi):
    renderer_classes = [_HtmlRenderer]
    content_type = "text/html; charset=utf-8"

    @extend_schema(
        operation_id="invoices_html",
        summary="The invoice rendered as HTML",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        responses={(200, "text/html"): OpenApiTypes.STR, **_document_errors(401, 404, 429)},
    )
    def get(self, request: Request, invoice_id: int) -> Any:
        return self._answer(request, invoice_id, documents.invoice_html)


class InvoicePdfApi(_InvoiceDocumentApi):
    renderer_classes = [_PdfRenderer]
    content_type = "application/pdf"

    @extend_schema(
        operation_id="invoices_pdf",
        summary="The invoice rendered as PDF",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        responses={
            (200, "application/pdf"): OpenApiTypes.BINARY,
            **_document_errors(401, 404, 429),
        },
    )
    def get(self, request: Request, invoice_id: int) -> Any:
        return self._answer(request, invoice_id, documents.invoice_pdf)


class CreditNoteListApi(APIView):
    @extend_schema(
        operation_id="invoices_credit_notes_list",
        summary="The credit notes issued on an invoice, newest first",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        responses={
            200: page_serializer(CreditNoteSerializer),
            **error_responses(400, 401, 404, 429),
        },
    )
    def get(self, request: Request, invoice_id: int) -> Response:
        invoice = selectors.invoice_get(caller=get_caller(request), invoice_id=invoice_id)
        return paginated_response(
            queryset=selectors.credit_notes_of(invoice=invoice),
            serializer_class=CreditNoteSerializer,
            request=request,
            view=self,
        )


class CreditNoteCreateApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_credit_notes_create",
        summary="Issue a credit note on a finalized invoice (operator finance)",
        description="amount is before tax, in whole cents; the tax on it is given back "
        "too. What the buyer still owes on the invoice is reduced first, the rest "
        "becomes prepaid credit. All credit notes together may not exceed the "
        "invoice's subtotal.",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=CreditNoteInputSerializer,
        responses={
            201: CreditNoteSerializer,
            **error_responses(400, 401, 403, 404, 409, 422, 429),
        },
    )
    # Not atomic: the ledger runs its own transaction; the credit note is keyed by the
    # Idempotency-Key, so a taken-over claim issues nothing twice.
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        key = idempotency_key(request, required=True)
        given = CreditNoteInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            amount = Money.parse(given.validated_data["amount"], invoice.currency).amount_micros
        except MoneyError as exc:
            raise InvalidInput(f"amount: {exc}", details={"field": "amount"}) from None
        note = invoicing.credit_note_issue(
            invoice=invoice,
            amount_micros=amount,
            reason=given.validated_data["reason"],
            key=f"api:{caller.organization.pk}:{key}",
            actor=actor_for(caller),
        )
        return Response(CreditNoteSerializer(note).data, status=status.HTTP_201_CREATED)


def _invoice_answer(caller: Caller, invoice: Invoice) -> Response:
    fresh = selectors.invoice_get(caller=caller, invoice_id=invoice.pk)
    return Response(InvoiceDetailSerializer(fresh).data)


_LIFECYCLE_ERRORS = error_responses(400, 401, 403, 404, 409, 422, 429)


class InvoiceFinalizeApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_finalize",
        summary="Finalize a draft now (operator finance)",
        description="Numbers it, posts rounding, tax and the prepaid credit applied, and "
        "freezes its document. A monthly draft only once its month has ended; a final "
        "invoice is answered as it is.",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=None,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    # Not atomic: finalizing closes the usage month and catches rating up in
    # transactions of its own; a finalized invoice stays as it is, so a retry is safe.
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        invoice = invoicing.invoice_finalize_requested(invoice=invoice, actor=actor_for(caller))
        return _invoice_answer(caller, invoice)


class InvoiceVoidApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_void",
        summary="Void an unpaid finalized invoice (operator finance)",
        description="Reverses everything it posted; its number stays used. An invoice "
        "with payments or credit notes is corrected by a credit note instead (409).",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=ReasonInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        given = ReasonInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        invoice = invoicing.invoice_void(
            invoice=invoice, reason=given.validated_data["reason"], actor=actor_for(caller)
        )
        return _invoice_answer(caller, invoice)


class InvoiceMarkUncollectibleApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_mark_uncollectible",
        summary="Write off what is still owed on an invoice (operator finance)",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=OptionalReasonInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        given = OptionalReasonInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        invoice = invoicing.invoice_mark_uncollectible(
            invoice=invoice, reason=given.validated_data["reason"], actor=actor_for(caller)
        )
        return _invoice_answer(caller, invoice)


class InvoiceMarkPaidApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_mark_paid",
        summary="Record that an invoice was paid outside Stripe (operator finance)",
        description="A bank transfer or another manual payment of everything still "
        "owed: the receivable is settled and the invoice closed. The same reference "
        "again changes nothing.",
        tags=["invoices"],
        parameters=[_INVOICE_ID],
        request=MarkPaidInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request, invoice_id: int) -> Response:
        caller = get_caller(request)
        invoice = selectors.invoice_get(caller=caller, invoice_id=invoice_id)
        given = MarkPaidInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        invoice = invoicing.invoice_mark_paid(
            invoice=invoice,
            payment_reference=given.validated_data["payment_reference"],
            actor=actor_for(caller),
        )
        return _invoice_answer(caller, invoice)


class JobInvoiceIssueApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="invoices_job_issue",
        summary="Invoice one ended fine-tune job on its own, now (operator finance)",
        description="Finalized at once, with the per-job minimum applied; the job then "
        "stays off the monthly invoice. Asking again answers the same invoice.",
        tags=["invoices"],
        request=JobInvoiceInputSerializer,
        responses={200: InvoiceDetailSerializer, **_LIFECYCLE_ERRORS},
    )
    @idempotent(required=True, atomic=False)
    def post(self, request: Request) -> Response:
        caller = get_caller(request)
        given = JobInvoiceInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        organization = selectors.organization_for_caller(
            caller=caller, organization_id=given.validated_data["organization"]
        )
        invoice = invoicing.invoice_job_request(
            organization=organization, job=given.validated_data["job"], actor=actor_for(caller)
        )
        return _invoice_answer(caller, invoice)


# --- billing profiles ---------------------------------------------------------------


class BillingProfileGetApi(APIView):
    @extend_schema(
        operation_id="billing_profiles_retrieve",
        summary="Who an organization's invoices are addressed to, and its tax rate",
        description="Your own organization's; operator finance staff read any.",
        tags=["invoices"],
        parameters=[_ORGANIZATION_ID],
        responses={200: BillingProfileSerializer, **error_responses(401, 404, 429)},
    )
    def get(self, request: Request, organization_id: int) -> Response:
        organization = selectors.organization_for_caller(
            caller=get_caller(request), organization_id=organization_id
        )
        profile = selectors.billing_profile_of(organization=organization)
        return Response(BillingProfileSerializer(profile).data)


class BillingProfileSetApi(APIView):
    permission_classes = [IsPlatformFinance]

    @extend_schema(
        operation_id="billing_profiles_set",
        summary="Set an organization's billing profile and tax rate (operator finance)",
        description="Replaces the whole profile (fields left out are empty). Invoices "
        "finalized from now on use it; finalized ones keep theirs.",
        tags=["invoices"],
        parameters=[_ORGANIZATION_ID],
        request=BillingProfileSerializer,
        responses={200: BillingProfileSerializer, **error_responses(400, 401, 403, 404, 429)},
    )
    def put(self, request: Request, organization_id: int) -> Response:
        caller = get_caller(request)
        organization = selectors.organization_for_caller(
            caller=caller, organization_id=organization_id
        )
        given = BillingProfileSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        profile = invoicing.billing_profile_set(
            organization=organization, **given.validated_data, actor=actor_for(caller)
        )
        return Response(BillingProfileSerializer(profile).data)


# --- provider statements --------------------------------------------------------------


class IsProviderOrPlatformFinance(BasePermission):
    message = "this needs a provider organization (or the operator's finance staff)"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = getattr(request, "caller", None)
        return caller is not None and (
            caller.organization.is_provider or caller.is_platform_finance
        )


class ProviderStatementSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    organization = serializers.IntegerField(source="organization_id", read_only=True)
    period = serializers.SerializerMethodField(help_text="YYYY-MM")
    currency = serializers.CharField(read_only=True)
    gpu_seconds = serializers.IntegerField(read_only=True)
    gross_micros = serializers.IntegerField(read_only=True, help_text="at lease prices")
    gross = MoneyText("gross_micros")
    fee_micros = serializers.IntegerField(
        read_only=True, help_text="the platform fee buyers paid on top (not deducted)"
    )
    fee = MoneyText("fee_micros")
    net_payable_micros = serializers.IntegerField(read_only=True)
    net_payable = MoneyText("net_payable_micros")
    payouts_micros = serializers.IntegerField(read_only=True)
    payouts = MoneyText("payouts_micros")
    closing_balance_micros = serializers.IntegerField(
        read_only=True, help_text="the payable at the end of the month"
    )
    closing_balance = MoneyText("closing_balance_micros")
    generated_at = serializers.DateTimeField(read_only=True)

    def get_period(self, statement: Any) -> str:
        return f"{statement.period_start:%Y-%m}"


class ProviderStatementListApi(APIView):
    permission_classes = [IsProviderOrPlatformFinance]

    @extend_schema(
        operation_id="statements_list",
        summary="Your monthly statements of closed months, newest first (providers)",
        description="Operator finance staff see every provider's (organization= narrows "
        "it to one). The current month: GET /api/v1/statements/{period}.",
        tags=["statements"],
        parameters=[
            OpenApiParameter(
                "organization", OpenApiTypes.INT, description="operator finance: one org"
            )
        ],
        responses={
            200: page_serializer(ProviderStatementSerializer),
            **error_responses(400, 401, 403, 429),
        },
    )
    def get(self, request: Request) -> Response:
        statements = selectors.statements_for_caller(
            caller=get_caller(request), organization_id=_query_id(request, "organization")
        )
        return paginated_response(
            queryset=statements,
            serializer_class=ProviderStatementSerializer,
            request=request,
            view=self,
        )


class ProviderStatementDetailApi(APIView):
    permission_classes = [IsProviderOrPlatformFinance]

    @extend_schema(
        operation_id="statements_retrieve",
        summary="A provider's month: GPU time per node and GPU model, earnings, fees, payouts",
        description="A closed month answers the statement written at its close "
        "(closed: true); the current month (or one not closed yet) is computed from the "
        "journal now. Each line lists the journal entries it adds up. Operator finance "
        "staff name the provider with organization=.",
        tags=["statements"],
        parameters=[
            OpenApiParameter(
                "period", OpenApiTypes.STR, OpenApiParameter.PATH, description="YYYY-MM"
            ),
            OpenApiParameter(
                "organization", OpenApiTypes.INT, description="operator finance: the provider"
            ),
        ],
        responses={
            200: inline_serializer(
                "ProviderStatementDocument",
                {
                    "organization": serializers.IntegerField(),
                    "period": serializers.CharField(),
                    "closed": serializers.BooleanField(),
                    "generated_at": serializers.DateTimeField(),
                    "statement": serializers.DictField(
                        help_text="lines (node, gpu_model, gpu_seconds, gpu_hours, gross, "
                        "platform_fee, net_payable, entries), payouts and totals"
                    ),
                },
            ),
            **error_responses(400, 401, 403, 404, 429),
        },
    )
    def get(self, request: Request, period: str) -> Response:
        caller = get_caller(request)
        month = _period(period)
        now = timezone.now()
        if month > now.date():
            raise InvalidInput(f"{period} has not begun yet", details={"parameter": "period"})
        wanted = _query_id(request, "organization") or caller.organization.pk
        provider = selectors.organization_for_caller(caller=caller, organization_id=wanted)
        if not provider.is_provider:
            raise NotFound(
                f"{provider.name} is not a provider", details={"organization": provider.pk}
            )
        found = selectors.statement_for_period(
            provider=provider, period=month, now=now, currency=settings.TANDEM_CURRENCY
        )
        return Response(
            {
                "organization": found.organization_id,
                "period": f"{found.period:%Y-%m}",
                "closed": found.closed,
                "generated_at": found.generated_at,
                "statement": found.document,
            }
        )
