"""The separate hosts the node tests run agents on: network namespaces that reach the
server's bridge address and each other, and leave nothing behind, even on failure."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.node import netns

LISTEN = """
import socket, sys
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
peer, _ = server.accept()
peer.sendall(peer.recv(16)[::-1])
"""
CONNECT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as c:
    c.sendall(b"tandem")
    print(c.recv(16).decode())
"""


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _links() -> str:
    return subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


def test_each_host_reaches_the_bridge_and_the_other_and_nothing_is_left():
    net = netns.Network()
    try:
        net.up()
    except netns.NetnsUnavailable as exc:
        net.down()
        pytest.skip(f"separate hosts need network namespaces: {exc}")
    try:
        first, second = net.host(), net.host()
        assert net.addresses[first] != net.addresses[second]
        # host 2 listens on its address; host 1 and the root namespace connect to it
        for client in (["ip", "netns", "exec", first], []):
            listener = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    second,
                    sys.executable,
                    "-c",
                    LISTEN,
                    net.addresses[second],
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            port = listener.stdout.readline().strip()
            echoed = subprocess.run(
                [*client, sys.executable, "-c", CONNECT, net.addresses[second], port],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert echoed.stdout.strip() == "mednat", echoed.stderr
            assert listener.wait(timeout=10) == 0
        # the loopback of a host is its own: nothing listens on it
        refused = subprocess.run(
            ["ip", "netns", "exec", first, sys.executable, "-c", CONNECT, "127.0.0.1", "5432"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert refused.returncode != 0 and "refused" in refused.stderr.lower()
    finally:
        net.down()
    assert f"tdm-{net.tag}-" not in _namespaces()
    assert net.bridge not in _links()


def test_the_network_is_removed_when_the_block_fails():
    names: list[str] = []
    with pytest.raises(RuntimeError, match="the test failed"):
        try:
            with netns.network() as net:
                names.append(net.host())
                names.append(net.bridge)
                raise RuntimeError("the test failed")
        except netns.NetnsUnavailable as exc:
            pytest.skip(f"separate hosts need network namespaces: {exc}")
    assert names[0] not in _namespaces() and names[1] not in _links()
