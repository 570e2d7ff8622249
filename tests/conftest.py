"""Fixtures for the whole suite.

``cast`` is the named cast every permission test uses: two provider organizations,
two buyer organizations, the operator (whose finance staff read platform-wide books)
and an anonymous caller. Every endpoint is tried by the wrong one of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cached_property

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from core import services
from core.models import Organization


class Cast:
    def __init__(self) -> None:
        self.provider_a = services.org_create(name="Provider A", kind="provider")
        self.provider_b = services.org_create(name="Provider B", kind="provider")
        self.buyer_a = services.org_create(name="Buyer A", kind="buyer")
        self.buyer_b = services.org_create(name="Buyer B", kind="buyer")
        self.operator = services.org_create(name="Operator", kind="both", is_operator=True)
        self.anonymous = APIClient()

    def client(self, org: Organization, role: str = "admin") -> APIClient:
        """An APIClient carrying a fresh API key of ``role`` in ``org``; the key is at
        ``client.api_key`` (the row) and ``client.raw_key`` (the secret)."""
        created = services.api_key_create(organization=org, name=f"cast {role}", role=role)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")
        client.organization = org  # type: ignore[attr-defined]
        client.api_key = created.api_key  # type: ignore[attr-defined]
        client.raw_key = created.raw_key  # type: ignore[attr-defined]
        return client

    def agent(self, org: Organization, node: object | None = None) -> APIClient:
        """An APIClient carrying a fresh agent key (scope ``agent``) of ``org``, bound to
        ``node`` when one is given (as its first registration would bind it)."""
        from providers import services as supply
        from providers.models import AgentKey

        created = supply.agent_key_create(organization=org, name="cast agent")
        if node is not None:
            AgentKey.objects.filter(pk=created.agent_key.pk).update(node=node)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")
        client.organization = org  # type: ignore[attr-defined]
        client.api_key = created.agent_key.api_key  # type: ignore[attr-defined]
        client.raw_key = created.raw_key  # type: ignore[attr-defined]
        return client

    @cached_property
    def finance(self) -> APIClient:
        """Finance staff of the operator organization."""
        return self.client(self.operator, role="finance")

    @property
    def orgs(self) -> list[Organization]:
        return [self.provider_a, self.provider_b, self.buyer_a, self.buyer_b, self.operator]


@pytest.fixture
def cast(db: None) -> Cast:
    # ``db`` follows the test's django_db mark, so this works with transaction=True too.
    return Cast()


@pytest.fixture(autouse=True)
def _clear_cache() -> Iterator[None]:
    """Rate-limit counters, the price book (and anything else cached) never leak
    between tests."""
    from pricing.book import price_book_forget

    cache.clear()
    price_book_forget()
    yield
    cache.clear()
    price_book_forget()


# The suite serves plain http with DEBUG=0 (the test client, live_server, the servers
# tests start as subprocesses), where production redirects to https: no redirect here,
# whatever the environment running the suite says.
os.environ["SECURE_SSL_REDIRECT"] = "0"


@pytest.fixture(scope="session", autouse=True)
def _plain_http() -> Iterator[None]:
    from django.test.utils import override_settings

    with override_settings(SECURE_SSL_REDIRECT=False):
        yield
