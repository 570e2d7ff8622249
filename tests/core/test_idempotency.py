from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone
from rest_framework.response import Response
from rest_framework.test import APIClient

from core.errors import InsufficientFunds
from core.models import ApiKey, IdempotentRequest
from tests.core import idempotency_urls

pytestmark = pytest.mark.urls("tests.core.idempotency_urls")


@pytest.fixture(autouse=True)
def _no_queued_behaviour():
    idempotency_urls.AFTER_EFFECT.clear()
    yield
    idempotency_urls.AFTER_EFFECT.clear()


def made(name: str) -> int:
    return ApiKey.objects.filter(name=name).count()


def post(client, url="/things/", body=None, key="key-1", **extra):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(
        url, body if body is not None else {"name": "t"}, format="json", **headers, **extra
    )


def test_replay_returns_the_first_response_and_runs_once(cast):
    client = cast.client(cast.buyer_a)

    first = post(client, body={"name": "t"})
    again = post(client, body={"name": "t"})

    assert first.status_code == 201
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert made("t") == 1
    claim = IdempotentRequest.objects.get(organization=cast.buyer_a, key="key-1")
    assert claim.status_code == 201 and claim.completed_at is not None


def test_same_key_with_a_different_body_is_refused(cast):
    client = cast.client(cast.buyer_a)
    post(client, body={"name": "t"})

    response = post(client, body={"name": "other"})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert made("other") == 0


def test_same_key_on_another_path_is_refused(cast):
    client = cast.client(cast.buyer_a)
    post(client, body={"name": "t"})

    response = post(client, url="/strict-things/", body={"name": "t"})

    assert response.status_code == 422
    assert made("t") == 1


def test_keys_are_scoped_per_organization(cast):
    a, b = cast.client(cast.buyer_a), cast.client(cast.buyer_b)

    post(a, body={"name": "t"})
    response = post(b, body={"name": "t"})

    assert response.status_code == 201
    assert not response.has_header("Idempotent-Replayed")
    assert ApiKey.objects.filter(name="t", organization=cast.buyer_b).count() == 1
    assert made("t") == 2


def test_without_a_key_every_request_runs(cast):
    client = cast.client(cast.buyer_a)

    post(client, key=None)
    post(client, key=None)

    assert made("t") == 2
    assert not IdempotentRequest.objects.exists()


def test_a_view_can_require_the_header(cast):
    client = cast.client(cast.buyer_a)

    response = post(client, url="/strict-things/", key=None)

    assert response.status_code == 400
    body = response.json()["error"]
    assert "Idempotency-Key" in body["message"]
    assert body["details"] == {"header": "Idempotency-Key"}
    assert made("t") == 0


@pytest.mark.parametrize("key", ["", "x" * 201, "caf\u00e9", "tab\there"])
def test_malformed_keys_are_refused(cast, key):
    client = cast.client(cast.buyer_a)

    response = post(client, key=key)

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"header": "Idempotency-Key"}
    assert made("t") == 0


def test_longest_and_oddest_printable_keys_are_accepted(cast):
    client = cast.client(cast.buyer_a)

    assert post(client, key="k" * 200).status_code == 201
    assert post(client, key=" ~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~").status_code == 201


def test_an_unfinished_claim_answers_409_and_runs_nothing(cast):
    client = cast.client(cast.buyer_a)
    post(client, key="warm-up")  # learn the fingerprint the way a real first request would
    claim = IdempotentRequest.objects.get(key="warm-up")
    IdempotentRequest.objects.create(
        organization=cast.buyer_a,
        key="busy",
        method="POST",
        path="/things/",
        request_hash=claim.request_hash,
    )

    response = post(client, key="busy")

    assert response.status_code == 409
    assert "still in progress" in response.json()["error"]["message"]
    assert made("t") == 1  # only the warm-up


def test_a_raised_error_undoes_the_effect_and_frees_the_key(cast):
    client = cast.client(cast.buyer_a)

    def refuse(request):
        raise InsufficientFunds("not enough credit")

    idempotency_urls.AFTER_EFFECT.append(refuse)
    failed = post(client)
    retried = post(client)

    assert failed.status_code == 402
    assert retried.status_code == 201
    assert not retried.has_header("Idempotent-Replayed")
    assert made("t") == 1  # the failed run's key was rolled back with it


def test_a_returned_4xx_is_final_and_replayed(cast):
    client = cast.client(cast.buyer_a)
    idempotency_urls.AFTER_EFFECT.append(lambda request: Response({"why": "no"}, status=409))

    first = post(client)
    again = post(client)

    assert first.status_code == again.status_code == 409
    assert again.json() == {"why": "no"}
    assert again["Idempotent-Replayed"] == "true"
    assert made("t") == 1  # a returned answer is the request's outcome: its effects stand


def test_a_returned_5xx_is_undone_and_not_stored(cast):
    client = cast.client(cast.buyer_a)
    idempotency_urls.AFTER_EFFECT.append(lambda request: Response({"x": 1}, status=503))

    first = post(client)
    retried = post(client)

    assert first.status_code == 503
    assert retried.status_code == 201
    assert made("t") == 1


def test_a_stale_claim_of_a_dead_process_is_taken_over(cast):
    client = cast.client(cast.buyer_a)
    post(client, key="warm-up")
    fingerprint = IdempotentRequest.objects.get(key="warm-up").request_hash
    IdempotentRequest.objects.create(
        organization=cast.buyer_a,
        key="orphan",
        method="POST",
        path="/things/",
        request_hash=fingerprint,
    )
    IdempotentRequest.objects.filter(key="orphan").update(
        created_at=timezone.now() - timedelta(minutes=10)
    )

    response = post(client, key="orphan")

    assert response.status_code == 201
    assert made("t") == 2
    assert IdempotentRequest.objects.get(key="orphan").status_code == 201


def test_a_slow_run_whose_claim_was_taken_over_is_rolled_back(cast):
    client = cast.client(cast.buyer_a)

    def superseded(request):
        # Meanwhile a retry presumed this run dead and took the claim over.
        IdempotentRequest.objects.filter(key="key-1").update(created_at=timezone.now())

    idempotency_urls.AFTER_EFFECT.append(superseded)
    response = post(client)

    assert response.status_code == 409
    assert made("t") == 0


def test_non_atomic_views_replay_too(cast):
    client = cast.client(cast.buyer_a)

    first = post(client, url="/callout-things/")
    again = post(client, url="/callout-things/")

    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert made("t") == 1


def test_anonymous_callers_are_refused_before_any_claim(cast):
    response = post(cast.anonymous)

    assert response.status_code == 401
    assert not IdempotentRequest.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_take_effect_once(cast):
    raw_key = cast.client(cast.buyer_a).raw_key
    threads_n = 20
    barrier = threading.Barrier(threads_n)
    responses: list = []
    errors: list = []

    def send():
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
            barrier.wait()
            responses.append(post(client, body={"name": "race"}, key="same"))
        except Exception as exc:  # surfaced below, not swallowed
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(responses) == threads_n
    assert made("race") == 1
    statuses = {r.status_code for r in responses}
    assert statuses <= {201, 409}
    created = [r.json() for r in responses if r.status_code == 201]
    assert created and all(body == created[0] for body in created)
    assert IdempotentRequest.objects.filter(key="same").count() == 1


def test_an_oversized_body_is_413_and_claims_nothing(cast, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    client = cast.client(cast.buyer_a)

    response = post(client, body={"name": "t", "padding": "x" * 2048})

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert not IdempotentRequest.objects.exists()
    assert made("t") == 0
