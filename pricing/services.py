"""The public surface."""

from __future__ import annotations

# The app's public surface: other apps import these names from here.
from pricing.quotes import fine_tune_quote
from pricing.schedule import price_schedule

__all__ = ["fine_tune_quote", "price_schedule"]
