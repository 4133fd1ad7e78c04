"""Several "hosts" on this machine for end-to-end tests: one network namespace per host,
all plugged into one switch (FIELD-NOTES: root may make namespaces and veth pairs here).

    with hosts(["head", "gpu-1", "gpu-2"]) as net:
        net["head"].address          # "10.211.37.1"
        net["gpu-1"].run(["curl", f"http://{net['head'].address}:8080/"])

Layout: a namespace `sd<pid>-<tag>-sw` holds a bridge (the switch); each host's namespace
`sd<pid>-<tag>-<i>` has `lo` up and an `eth0`, one end of a veth pair whose other end is a
port of the bridge. An `offline` host (a CA's machine) has `lo` alone. Every link is made
directly inside its namespace, so nothing appears in the machine's own namespace, and the
hosts reach each other only through the switch: the root namespace has no route to them,
and they none to anything else. Addresses are in 10.211.<k>.0/24 with k random (each
test's switch is its own network, so two tests may even pick the same k; the random k
only keeps logs of parallel runs apart).

Processes enter a host with `nsenter --net=/var/run/netns/NS --`, never `ip netns exec`:
that one also makes a mount namespace and remounts /sys, where the cgroup mounts are gone
(agents would fall back to process groups, and the unit runner's cgroups vanish). So only
the network differs between hosts: the file system, users, cgroups and pids are this
machine's.

Teardown (also when the body fails): every process still in a namespace is SIGKILLed
(`ip netns pids`), then each namespace is deleted, which deletes its links.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

NETNS_DIR = "/var/run/netns"
PREFIX_LEN = 24


@dataclass(frozen=True)
class Host:
    name: str  # the test's name for it: "head", "gpu-1"
    netns: str  # the namespace's name (ip netns list)
    address: str  # its IPv4 address on the switch

    def enter(self) -> list[str]:
        """The command prefix that runs a program in this host's network."""
        return ["nsenter", f"--net={NETNS_DIR}/{self.netns}", "--"]

    def command(self, argv: Sequence[str]) -> list[str]:
        return [*self.enter(), *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run in this host (kwargs as subprocess.run's: user=, env=, ...)."""
        return subprocess.run(self.command(argv), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.command(argv), **kwargs)

    def pids(self) -> list[int]:
        """Every process whose network namespace is this host's."""
        return _netns_pids(self.netns)


class Network:
    """The hosts of one switch, by name; `subnet` is their /24."""

    def __init__(self, switch: str, subnet: str, hosts: dict[str, Host]) -> None:
        self.switch = switch
        self.subnet = subnet
        self.hosts = hosts

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())


@contextlib.contextmanager
def hosts(names: Sequence[str], offline: Sequence[str] = ()) -> Iterator[Network]:
    """Network namespaces for `names` (at most 250) on one switch, and for `offline`
    (machines with no network at all: only `lo`, address 127.0.0.1); removed at the end."""
    every = [*names, *offline]
    if not names or len(names) > 250 or len(set(every)) != len(every):
        raise ValueError(f"1 to 250 distinct host names, got {every!r}")
    # The pid says which test run made it (a leftover is traced back); the random part
    # keeps two sets of one process apart.
    stem = f"sd{os.getpid()}-{secrets.token_hex(2)}"
    k = random.randint(1, 254)
    subnet = f"10.211.{k}.0/{PREFIX_LEN}"
    switch = f"{stem}-sw"
    made: list[str] = []
    try:
        _ip("netns", "add", switch)
        made.append(switch)
        _ip("-n", switch, "link", "set", "lo", "up")
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        network: dict[str, Host] = {}
        for i, name in enumerate(names, start=1):
            ns = f"{stem}-{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            port = f"p{i}"
            # Both ends made inside their namespaces: no name is ever taken in the root one.
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
                "netns", switch)  # fmt: skip
            _ip("-n", switch, "link", "set", port, "master", "br0")
            _ip("-n", switch, "link", "set", port, "up")
            address = f"10.211.{k}.{i}"
            _ip("-n", ns, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            network[name] = Host(name, ns, address)
        for i, name in enumerate(offline, start=len(names) + 1):
            ns = f"{stem}-{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            network[name] = Host(name, ns, "127.0.0.1")
        yield Network(switch, subnet, network)
    finally:
        errors = []
        for ns in reversed(made):
            try:
                _remove(ns)
            except (OSError, subprocess.SubprocessError, TimeoutError) as e:
                errors.append(f"{ns}: {e}")
        if errors:
            raise RuntimeError("network namespaces left behind: " + "; ".join(errors))


def _remove(ns: str, timeout_s: float = 10.0) -> None:
    """Kill what still runs in `ns` and delete it. A process that outlives its namespace's
    name would keep the namespace (and its links) alive, so it goes first."""
    deadline = time.monotonic() + timeout_s
    while pids := _netns_pids(ns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {pids} in {ns} do not die")
        time.sleep(0.05)
    _ip("netns", "del", ns)


def _netns_pids(ns: str) -> list[int]:
    out = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
    ).stdout
    # Our own pid never counts (it cannot be in a test's namespace), zombies do not die.
    return [int(p) for p in out.split() if int(p) != os.getpid() and not _zombie(int(p))]


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return True  # gone


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
