"""The demo's side of make run's agent: the node's agent key in a file (mode 0600, kept
while it is the node's live agent key) and the command placed on the running lease."""

from __future__ import annotations

import stat

import pytest

from core import selectors as core_selectors
from core import services as core
from marketplace.assignments import demo as runs
from providers import demo as supply
from providers.models import AgentKey, Node

pytestmark = pytest.mark.django_db


def test_the_demo_writes_the_nodes_agent_key_once_and_again_when_it_is_revoked(cast, tmp_path):
    supply.load(provider=cast.provider_a)
    path = tmp_path / "var" / "demo-agent.key"

    supply.agent_key_file(provider=cast.provider_a, path=path)
    first = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = core_selectors.api_key_for_secret(raw_key=first)
    node = Node.objects.get(hostname=supply.HOSTNAME)
    assert AgentKey.objects.get(api_key=key).node == node  # bound to the demo node

    supply.agent_key_file(provider=cast.provider_a, path=path)  # a second demo run
    assert path.read_text().strip() == first

    core.api_key_revoke(api_key=key)
    supply.agent_key_file(provider=cast.provider_a, path=path)
    assert path.read_text().strip() != first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_demo_run_without_an_active_raw_lease_on_the_node(cast):
    supply.load(provider=cast.provider_a)
    assert runs.load(buyer=cast.buyer_a, hostname=supply.HOSTNAME) is None
