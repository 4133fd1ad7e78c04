"""The Unix uid of a loopback TCP peer, as the kernel reports it.

On the daemon's own machine a user needs no credential file: the kernel's socket
table (/proc/net/tcp, /proc/net/tcp6) says which uid owns the client end of a
loopback connection, the way identd and SO_PEERCRED do. gRPC tells us the peer's
address and port ("ipv4:127.0.0.1:54321"); the socket whose local end is that address
and whose remote end is one of our ports is the caller's. Only loopback peers are
looked up: for any other address the table would describe this machine's sockets,
not the caller's.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Collection
from pathlib import Path

_ESTABLISHED = "01"
_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def parse_peer(peer: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """gRPC's peer string → (address, port), or None for unix sockets and oddities."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host), int(port)
    except ValueError:
        return None


def is_loopback(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def loopback_peer_uid(peer: str, our_ports: Collection[int]) -> int | None:
    """The uid owning the client socket of a loopback connection to one of our ports,
    or None (not loopback, or not found: the caller then has no local identity)."""
    parsed = parse_peer(peer)
    if parsed is None or not is_loopback(parsed[0]):
        return None
    addr, port = parsed
    wanted = _hex_endpoint(addr, port)
    for table in _TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
            if len(fields) < 8 or fields[1] not in wanted or fields[3] != _ESTABLISHED:
                continue
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port in our_ports:
                return int(fields[7])
    return None


def _hex_endpoint(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> set[str]:
    """How /proc/net/tcp{,6} spell an endpoint: the address as the kernel's words
    in host byte order, then the port, in hex. An IPv4 peer of a dual-stack socket
    appears in tcp6 as ::ffff:a.b.c.d."""
    v4 = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else addr
    spelled = set()
    if v4 is not None:
        spelled.add(f"{_words(v4.packed)}:{port:04X}")
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + v4.packed)
        spelled.add(f"{_words(mapped.packed)}:{port:04X}")
    else:
        spelled.add(f"{_words(addr.packed)}:{port:04X}")
    return spelled


def _words(packed: bytes) -> str:
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words)
