"""Ports: interfaces one app needs from another that it may not import.

The package table in ARCHITECTURE.md fixes who may import whom (marketplace and
runtime import only ``core`` and, for marketplace, ``providers``). Where a consumer
needs an answer synchronously — the buyer's available credit before an order is
accepted, a hold placed in the same transaction as a lease, a usage event recorded by
the runtime in-process — the consumer's interface is declared here as a ``Protocol``
and the owning app registers its implementation in ``AppConfig.ready()``:

    # billing/apps.py
    ports.register("credit", BillingCredit())

    # marketplace/services.py
    ports.get("credit").available(organization_id=..., currency="USD")

Everything else between apps goes through the event store. A port looked up before
its provider registered raises ``LookupError`` naming it, so a missing app in
``INSTALLED_APPS`` fails loudly at the first call rather than silently doing nothing.
"""

from __future__ import annotations

from typing import Any

_registry: dict[str, Any] = {}


def register(name: str, implementation: Any) -> None:
    """Register ``implementation`` for port ``name`` (the newest registration wins, so
    a test may swap one in and restore the old one)."""
    _registry[name] = implementation


def get(name: str) -> Any:
    try:
        return _registry[name]
    except KeyError:
        raise LookupError(
            f"port {name!r} has no implementation registered; is the app that provides it "
            "in INSTALLED_APPS?"
        ) from None


def registered(name: str) -> bool:
    return name in _registry


# --- Port protocols -------------------------------------------------------------
# Each consumer declares the Protocol it calls below, in its own section, with the
# name it is registered under.
