"""Separate hosts on one machine: Linux network namespaces (``ip netns``), one per
node, each joined by a veth pair to a bridge in the root namespace, where the test's
server listens on the bridge's address. Each node has its own loopback and its own
address on a private /24; the nodes reach the server and each other only across
the bridge, as machines of one site reach each other over their network.

Names carry this process's id, so two test runs on one machine do not meet; every
namespace and link is removed on the way out, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field


class NetnsUnavailable(RuntimeError):
    """``ip netns add`` is not permitted here (not root, or no CAP_SYS_ADMIN/NET_ADMIN)."""


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


@dataclass
class Network:
    """A bridge in the root namespace and, per host, a namespace with a veth to it."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 100_000}")
    subnet: str = ""
    bridge: str = ""
    namespaces: list[str] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)  # namespace -> its address
    interfaces: dict[str, str] = field(default_factory=dict)  # namespace -> its interface

    def __post_init__(self) -> None:
        pid = os.getpid()
        self.subnet = f"10.{200 + pid % 50}.{(pid // 50) % 250}"
        self.bridge = f"tdb{self.tag}"

    @property
    def server_address(self) -> str:
        return f"{self.subnet}.1"

    def up(self) -> None:
        if shutil.which("ip") is None:
            raise NetnsUnavailable("the ip command (iproute2) is not installed")
        probe = f"tdm-{self.tag}-probe"
        done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if done.returncode != 0:
            raise NetnsUnavailable(f"ip netns add is not permitted: {done.stderr.strip()}")
        _ip("netns", "del", probe)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.server_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def host(self) -> str:
        """A new namespace on the bridge; returns its name (its address in ``addresses``)."""
        index = len(self.namespaces) + 2
        name = f"tdm-{self.tag}-{index}"
        outside, inside = f"tv{self.tag}{index}", f"th{self.tag}{index}"
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", name)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        address = f"{self.subnet}.{index}"
        _ip("addr", "add", f"{address}/24", "dev", inside, netns=name)
        _ip("link", "set", inside, "up", netns=name)
        _ip("link", "set", "lo", "up", netns=name)
        self.addresses[name] = address
        self.interfaces[name] = inside
        return name

    def down(self) -> None:
        # Deleting a namespace destroys its end of the veth, and with it the pair.
        for name in self.namespaces:
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", name)
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", self.bridge)
        self.namespaces.clear()


@contextlib.contextmanager
def network() -> Iterator[Network]:
    net = Network()
    try:
        net.up()
        yield net
    finally:
        net.down()
