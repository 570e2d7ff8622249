"""The ledger's API: accounts and their balances, the journal, adjustments, credit
limits and the trial balance (``/api/v1/accounts/``, ``/journal/``,
``/trial-balance/``)."""

from __future__ import annotations

import hashlib
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_fields import (
    MAX_DB_ID,
    MAX_REASON_LENGTH,
    DecimalTextField,
    MoneyTextField,
    NormalSideField,
    PlacedListSerializer,
    SideField,
    actor_for,
    parse_amount,
    query_currency,
    query_datetime,
)
from core.converters import query_id
from core.errors import IdempotencyConflict, InvalidInput
from core.idempotency import idempotency_key, idempotent
from core.money import CURRENCIES, Money, MoneyError
from core.pagination import page_serializer, paginated_response
from core.permissions import IsPlatformFinance
from core.schema import ErrorSerializer, error_responses
from core.tenancy import get_caller
from ledger import selectors, services
from ledger.models import Account

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


class AdjustmentLegInputSerializer(serializers.Serializer):
    class Meta:
        list_serializer_class = PlacedListSerializer

    account = serializers.IntegerField(min_value=1, max_value=MAX_DB_ID)
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
                leg["amount_micros"] = parse_amount(leg["amount"], currency)
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
            return parse_amount(value, self.context["currency"], allow_zero=True)
        except MoneyError as exc:
            raise serializers.ValidationError(str(exc)) from None


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
        account_id = query_id(request, "account")
        since = query_datetime(request, "since")
        until = query_datetime(request, "until")
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
