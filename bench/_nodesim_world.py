"""A real daemon and bench/nodesim.py as two processes, for the scale measures
(bench/kai_scale.py, bench/kueue_replay.py): the daemon started as for real (INFO logs,
the store in WAL + synchronous=FULL), with TLS and an mTLS listener for agents, node
certificates issued by a CA made here (as `schedctl ca` does); the simulator connects
every node with its own certificate. Clients use the daemon's loopback listener."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from _cluster import REPO, free_port, wait_for

from schedulerd.auth.ca import init_ca, issue_server
from schedulerd.client import Client


class World:
    def __init__(self, root: Path, policy: str, *, heartbeat_s: float = 2.0) -> None:
        self.root = root
        self.pki = root / "pki"
        ca = init_ca(self.pki)
        issue_server(ca, ["127.0.0.1"], self.pki)
        (root / "policy.yaml").write_text(policy)
        self.port, self.agent_port, self.http_port = free_port(), free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.heartbeat_s = heartbeat_s
        self.daemon: subprocess.Popen[bytes] | None = None
        self.sim: subprocess.Popen[bytes] | None = None
        self.status_file = root / "nodesim.json"
        self.client = Client(self.address, timeout_s=120, token="")

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO)}

    def start_daemon(self, extra: tuple[str, ...] = ()) -> None:
        profile = os.environ.get("SCHEDULERD_PROFILE", "")
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - lives with the process
        self.daemon = subprocess.Popen(
            [
                sys.executable,
                # SCHEDULERD_PROFILE=FILE: the daemon under cProfile, its stats in FILE
                # when it stops (where its time goes at this scale).
                *(("-m", "cProfile", "-o", profile) if profile else ()),
                "-m",
                "schedulerd.daemon",
                *("--listen", self.address, "--db", str(self.root / "schedulerd.db")),
                *("--policy", str(self.root / "policy.yaml")),
                *("--tls-cert", str(self.pki / "server.crt")),
                *("--tls-key", str(self.pki / "server.key")),
                *("--tls-client-ca", str(self.pki / "ca.crt")),
                *("--agent-listen", f"127.0.0.1:{self.agent_port}"),
                *("--heartbeat", str(self.heartbeat_s)),
                *("--http-listen", f"127.0.0.1:{self.http_port}"),
                *extra,
                *os.environ.get("SCHEDULERD_ARGS", "").split(),  # e.g. --log-level DEBUG
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=self._env(),
        )

        def serving() -> bool:
            assert self.daemon is not None
            if self.daemon.poll() is not None:
                raise SystemExit(f"the daemon exited; see {self.root / 'daemon.log'}")
            try:
                self.client.nodes()
                return True
            except Exception:
                return False

        wait_for("the daemon to serve", serving)

    def start_sim(self, nodes: int, gpus: int, *args: str) -> None:
        log = open(self.root / "nodesim.log", "ab")  # noqa: SIM115
        self.sim = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bench" / "nodesim.py"),
                *("--daemon", f"127.0.0.1:{self.agent_port}"),
                *("--ca", str(self.pki), "--certs", str(self.pki / "nodes")),
                *("--nodes", str(nodes), "--gpus", str(gpus)),
                *("--status", str(self.status_file), "--status-every", "0.05"),
                *args,
                *os.environ.get("NODESIM_ARGS", "").split(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=self._env(),
        )

    def metric(self, name: str) -> float:
        """A series of the daemon's /metrics without labels (0 when absent)."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as page:
            for line in page.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.status_file.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def wait_registered(self, nodes: int, timeout_s: float = 300) -> float:
        """Seconds until the daemon lists every node UP."""
        t0 = time.monotonic()

        def up() -> bool:
            assert self.sim is not None
            if self.sim.poll() is not None:
                raise SystemExit(f"nodesim exited; see {self.root / 'nodesim.log'}")
            return (
                self.status().get("registered") == nodes
                and sum(1 for n in self.client.nodes() if n.state == 1) == nodes
            )

        wait_for(f"{nodes} nodes up", up, timeout_s)
        return time.monotonic() - t0

    def allocation(self) -> dict[str, int]:
        return {c.path: c.allocation for c in self.client.consumers().consumers}

    def busy(self, consumer: str) -> int:
        return int(self.status().get("busy_by_consumer", {}).get(consumer, 0))

    def stop(self) -> None:
        self.client.close()
        for proc in (self.sim, self.daemon):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


class ProcStat:
    """A process's RSS and CPU time, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick

    def cpu_share(self, window_s: float) -> float:
        """The share of one core it used over the next window_s seconds."""
        c0, t0 = self.cpu_s(), time.monotonic()
        time.sleep(window_s)
        return (self.cpu_s() - c0) / (time.monotonic() - t0)
