from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from core.models import ApiKey, Organization


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_create_org():
    output = run("create_org", "--name", "Lab 7", "--kind", "both", "--operator")

    org = Organization.objects.get(name="Lab 7")
    assert org.kind == "both" and org.is_operator is True
    assert "Lab 7" in output and str(org.pk) in output


@pytest.mark.django_db
def test_create_org_refuses_a_bad_kind():
    with pytest.raises(CommandError, match="kind"):
        run("create_org", "--name", "Lab 7", "--kind", "seller")
    assert not Organization.objects.exists()


@pytest.mark.django_db
def test_create_org_refuses_a_taken_name_and_a_second_operator(cast):
    with pytest.raises(CommandError, match="exists already"):
        run("create_org", "--name", "Buyer A", "--kind", "buyer")
    with pytest.raises(CommandError, match="operator"):
        run("create_org", "--name", "Second operator", "--kind", "both", "--operator")


@pytest.mark.django_db
def test_create_api_key_prints_a_working_key_alone_on_its_last_line(cast):
    output = run("create_api_key", "--org", "Provider A", "--role", "finance", "--name", "books")

    raw_key = output.rstrip("\n").splitlines()[-1]
    assert raw_key.startswith("tdm_") and " " not in raw_key
    api_key = ApiKey.objects.get(name="books")
    assert api_key.role == "finance" and api_key.organization == cast.provider_a
    assert raw_key not in api_key.hashed_key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert client.get("/api/v1/organization").json()["id"] == cast.provider_a.pk


@pytest.mark.django_db
def test_create_api_key_defaults_to_admin(cast):
    run("create_api_key", "--org", "Buyer B")

    assert ApiKey.objects.get(organization=cast.buyer_b).role == "admin"


@pytest.mark.django_db
def test_create_api_key_refuses_an_unknown_org():
    with pytest.raises(CommandError, match="no organization named 'Nobody'"):
        run("create_api_key", "--org", "Nobody")
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_create_api_key_refuses_a_bad_role(cast):
    with pytest.raises(CommandError, match="role"):
        run("create_api_key", "--org", "Buyer A", "--role", "owner")
