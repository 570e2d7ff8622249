"""Pricing's public writes and rating, for the apps above it (marketplace, invoicing,
payments, exports): scheduling prices, billing terms, rating usage into journal
entries, and the lease holds behind raw GPU leases. Reads are in ``selectors``."""

from __future__ import annotations

from pricing.lease_holds import (
    LEASE_CREDIT,
    GpuTimeCost,
    LeaseCredit,
    lease_hold_id,
    leases_settled_by_hold,
)
from pricing.quotes import fine_tune_quote
from pricing.rating import rate_quantity, rate_usage, usage_rating, usage_transfer_id
from pricing.schedule import price_schedule
from pricing.terms import billing_terms_for, billing_terms_set
from pricing.welcome import promo_credits_expire, welcome_credit_grant

__all__ = [
    "LEASE_CREDIT",
    "GpuTimeCost",
    "LeaseCredit",
    "billing_terms_for",
    "billing_terms_set",
    "fine_tune_quote",
    "lease_hold_id",
    "leases_settled_by_hold",
    "price_schedule",
    "promo_credits_expire",
    "rate_quantity",
    "rate_usage",
    "usage_rating",
    "usage_transfer_id",
    "welcome_credit_grant",
]
