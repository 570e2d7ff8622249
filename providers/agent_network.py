"""This node's network, as the agent sees it: the address the server (and a gang's
other nodes) reach it at, a free port for a rendezvous, the interface holding an
address. Standard library only, like the rest of the agent."""

from __future__ import annotations

import socket
import struct
import urllib.parse

SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


def node_address(server: str) -> str:
    """The address of this node that the server sees it from: the source address of
    a route to the server (no packet is sent). A gang's nodes share a site, so the
    others reach it there too; ``--advertise-address`` overrides it."""
    parsed = urllib.parse.urlsplit(server)
    host = parsed.hostname or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, parsed.port or 443))
        return str(probe.getsockname()[0])


def free_port(address: str) -> int:
    """A TCP port free on ``address`` now (the rendezvous store binds it soon after)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def interface_of(address: str) -> str | None:
    """The network interface holding IPv4 ``address`` (Linux), for gloo and NCCL,
    which otherwise pick the interface the hostname resolves to (in a container or a
    network namespace, often one the other nodes cannot reach)."""
    try:
        import fcntl
    except ImportError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(
                    probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15])
                )
            except OSError:
                continue
            if socket.inet_ntoa(raw[20:24]) == address:
                return name
    return None
