"""A daemon and agents as real processes for the benchmarks, started as for real:
`python -m schedulerd.daemon` (store in WAL + synchronous=FULL, log level INFO)
and `python -m agent --fake-gpus N`, on 127.0.0.1, in a temporary folder."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from schedulerd.client import Client

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 60.0) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class BenchCluster:
    def __init__(self, root: Path, policy_text: str, tick_s: float | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.policy = root / "policy.yaml"
        self.policy.write_text(policy_text)
        self.db = root / "schedulerd.db"
        self.tick_s = tick_s  # None: the daemon's default
        self.daemon: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.client = Client(self.address, timeout_s=30)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        return env

    def start_daemon(self, log_level: str = "INFO") -> None:
        cmd = [
            sys.executable,
            "-m",
            "schedulerd.daemon",
            "--listen",
            self.address,
            "--db",
            str(self.db),
            "--policy",
            str(self.policy),
            "--log-level",
            log_level,
        ]
        if self.tick_s is not None:
            cmd += ["--tick", str(self.tick_s)]
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - lives with the process
        self.daemon = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=self._env()
        )

        def serving() -> bool:
            assert self.daemon is not None
            if self.daemon.poll() is not None:
                raise SystemExit(f"the daemon exited; see {self.root / 'daemon.log'}")
            try:
                with grpc.insecure_channel(self.address) as ch:
                    resp = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError:
                return False

        wait_for("the daemon to serve", serving)

    def start_agent(self, node: str, gpus: int, log_level: str = "INFO") -> None:
        log = open(self.root / f"agent-{node}.log", "ab")  # noqa: SIM115
        self.agents[node] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "--daemon",
                self.address,
                "--node",
                node,
                "--fake-gpus",
                str(gpus),
                "--state-dir",
                str(self.root / "agents"),
                "--log-level",
                log_level,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=self._env(),
        )

    def wait_nodes_up(self, count: int) -> None:
        wait_for(
            f"{count} nodes up",
            lambda: sum(1 for n in self.client.nodes() if n.state == 1) >= count,
        )

    def stop(self) -> None:
        self.client.close()
        procs = [p for p in (*self.agents.values(), self.daemon) if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
