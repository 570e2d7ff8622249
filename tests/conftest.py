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


@pytest.fixture(scope="session", autouse=True)
def _flush_by_deleting() -> Iterator[None]:
    """A transactional test (``transaction=True``, ``live_server``) empties every
    table after it. Django does it with one TRUNCATE of all ~80 tables, which makes
    new files for each table and index: 0.34 s a test on this machine, most of a
    short test's time. Here, on PostgreSQL with a superuser (as ``make test`` runs),
    only the tables holding rows are emptied, by DELETE with triggers and foreign
    keys off for that transaction (``session_replication_role``): 2–20 ms.
    database_cleaner's "deletion" strategy, for the same reason. The append-only
    triggers and every constraint are as they were for the next test; a flush that
    resets sequences, or a role that may not set the switch, keeps Django's."""
    from django.db import connection
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(
        self: DatabaseOperations,
        style: object,
        tables: list[str],
        *,
        reset_sequences: bool = False,
        allow_cascade: bool = False,
    ) -> list[str]:
        if reset_sequences or not tables or not _superuser(self.connection):
            return truncate(
                self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
            )
        quote = self.quote_name
        # Content types and permissions stay: the post-migrate step after every flush
        # makes the very same rows again, which is another 0.1 s a test.
        tables = [table for table in tables if table not in KEPT_BY_FLUSH]
        probe = " UNION ALL ".join(
            f"SELECT %s WHERE EXISTS (SELECT 1 FROM {quote(table)})" for table in tables
        )
        with self.connection.cursor() as cursor:
            cursor.execute(probe, list(tables))
            filled = [row[0] for row in cursor.fetchall()]
        if not filled:
            return []
        return [
            "SET LOCAL session_replication_role = replica",
            *(f"DELETE FROM {quote(table)}" for table in filled),
        ]

    if connection.vendor != "postgresql":
        yield
        return
    DatabaseOperations.sql_flush = sql_flush  # type: ignore[method-assign]
    try:
        yield
    finally:
        DatabaseOperations.sql_flush = truncate  # type: ignore[method-assign]


KEPT_BY_FLUSH = frozenset({"django_content_type", "auth_permission"})


def _superuser(connection: object) -> bool:
    found = getattr(connection, "_tandem_superuser", None)
    if found is None:
        with connection.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            found = bool(cursor.fetchone()[0])
        connection._tandem_superuser = found  # type: ignore[attr-defined]
    return found
