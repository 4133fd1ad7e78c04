"""Real processes for end-to-end tests: the daemon and agents as subprocesses on
127.0.0.1, real SQLite files, the client library over real gRPC."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from schedulerd.client import Client

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str, probe: Callable[[], T | None], timeout_s: float = 30.0, every_s: float = 0.1
) -> T:
    """Poll until probe() returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")


class Cluster:
    """A daemon and its agents, each a real process, in one temporary folder."""

    def __init__(
        self,
        root: Path,
        policy_text: str,
        tick_s: float = 0.2,
        daemon_args: tuple[str, ...] = (),
        listen: str = "",
        daemon_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.daemon_args = daemon_args
        self.daemon_env = daemon_env  # more environment for the daemon (NOTIFY_SOCKET...)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Where the daemon listens (a wildcard when agents in network namespaces must
        # reach it); clients here always use loopback.
        self.listen = listen.replace("PORT", str(self.port)) if listen else self.address
        self.policy = root / "policy.yaml"
        # The tests' jobs are root's (this process): let them run as root, as the
        # one-machine default policy does (docs/security.md), unless a test says.
        if "run_as_root" not in policy_text:
            policy_text = "run_as_root: true\n" + policy_text
        self.policy.write_text(policy_text)
        self.db = root / "schedulerd.db"
        self.tick_s = tick_s
        self.daemon: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.client = Client(self.address, timeout_s=10)

    def start_daemon(self) -> None:
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - lives with the process
        self.daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "schedulerd.daemon",
                "--listen",
                self.listen,
                "--db",
                str(self.db),
                "--policy",
                str(self.policy),
                "--tick",
                str(self.tick_s),
                "--log-level",
                "DEBUG",
                *self.daemon_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=None if self.daemon_env is None else {**os.environ, **self.daemon_env},
        )
        self.wait_healthy()

    def wait_healthy(self) -> None:
        def serving() -> bool:
            assert self.daemon is not None and self.daemon.poll() is None, self.log_tail()
            try:
                with grpc.insecure_channel(self.address) as ch:
                    stub = health_pb2_grpc.HealthStub(ch)
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError:
                return False

        wait_for("the daemon to serve", serving, every_s=0.2)

    def kill_daemon(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait(10)

    def start_agent(
        self,
        node: str,
        gpus: int = 4,
        extra_args: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),
        daemon: str = "",
    ) -> subprocess.Popen[bytes]:
        """`prefix`: run it under another command (`ip netns exec NS`); `daemon`: the
        address it reaches the daemon at (default: loopback)."""
        log = open(self.root / f"agent-{node}.log", "ab")  # noqa: SIM115
        self.agents[node] = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "agent",
                "--daemon",
                daemon or self.address,
                "--node",
                node,
                "--fake-gpus",
                str(gpus),
                "--state-dir",
                str(self.root / "agents"),
                "--log-level",
                "DEBUG",
                # Its own vouching socket and lock: the machine's defaults belong to no test.
                "--auth-socket",
                str(self.root / f"auth-{node}.sock"),
                "--lock-dir",
                str(self.root / "locks"),
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        return self.agents[node]

    def agent_log(self, node: str) -> str:
        path = self.root / f"agent-{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_nodes_up(self, count: int) -> None:
        def up() -> bool:
            return sum(1 for n in self.client.nodes() if n.state == 1) >= count

        wait_for(f"{count} nodes up", up)

    def allocation(self) -> dict[str, int]:
        return {c.path: c.allocation for c in self.client.consumers().consumers}

    def log_tail(self, lines: int = 40) -> str:
        path = self.root / "daemon.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        self.client.close()
        for proc in [*self.agents.values(), self.daemon]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*self.agents.values(), self.daemon]:
            if proc is not None:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@contextlib.contextmanager
def running_cluster(
    root: Path,
    policy_text: str,
    agents: dict[str, int],
    daemon_args: tuple[str, ...] = (),
    agent_args: tuple[str, ...] = (),
) -> Iterator[Cluster]:
    cluster = Cluster(root, policy_text, daemon_args=daemon_args)
    try:
        cluster.start_daemon()
        for node, gpus in agents.items():
            cluster.start_agent(node, gpus, agent_args)
        cluster.wait_nodes_up(len(agents))
        yield cluster
    finally:
        cluster.stop()


def sleep_job(seconds: float, exit_code: int = 0) -> list[str]:
    return [sys.executable, "-c", f"import time, sys; time.sleep({seconds}); sys.exit({exit_code})"]


def env_without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def remove_agent_cgroups(node: str) -> None:
    """Kill and remove what an agent of `node` left in its cgroups (a SIGKILLed agent,
    --keep-jobs-on-exit): tests must leave no cgroup behind."""
    from agent.cgroups import purge

    purge(node)
