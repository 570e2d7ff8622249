from __future__ import annotations

import dramatiq
import pytest
import redis
from django.conf import settings as django_settings

from core import health


@pytest.mark.django_db
def test_healthy_against_the_real_database_and_redis_broker(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["database"]["vendor"] == "postgresql"
    assert body["broker"]["ok"] is True
    assert body["broker"]["kind"] == "redis"
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_a_broker_outage_is_503_degraded_without_leaking_the_url(client, monkeypatch):
    broker = dramatiq.get_broker()

    def refuse():
        raise redis.ConnectionError(f"cannot reach {django_settings.DRAMATIQ_BROKER_URL}")

    monkeypatch.setattr(broker.client, "ping", refuse)

    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"]["ok"] is True
    assert body["broker"] == {"ok": False, "kind": "redis", "error": "ConnectionError"}
    text = response.content.decode()
    assert django_settings.DRAMATIQ_BROKER_URL not in text
    assert django_settings.DATABASES["default"]["HOST"] not in text


@pytest.mark.django_db
def test_a_database_outage_is_503_degraded(client, monkeypatch):
    monkeypatch.setattr(
        health, "check_database", lambda: {"ok": False, "vendor": "postgresql", "error": "X"}
    )

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["status"] == "degraded"


def test_the_in_process_broker_needs_nothing(monkeypatch):
    from dramatiq.brokers.stub import StubBroker

    monkeypatch.setattr(dramatiq, "get_broker", lambda: StubBroker())

    assert health.check_broker() == {"ok": True, "kind": "in-process"}


@pytest.mark.django_db
def test_healthz_needs_no_credentials_and_ignores_bad_ones(client):
    response = client.get("/healthz", HTTP_AUTHORIZATION="Bearer tdm_bad_bad")

    assert response.status_code == 200


@pytest.mark.django_db
def test_healthz_only_answers_get_and_head(client):
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405
