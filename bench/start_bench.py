"""How fast the services start and reload, as systemd sees them (issue 11).

    .venv/bin/python bench/start_bench.py [--runs 5]

Each run starts a real process with NOTIFY_SOCKET pointing at a socket of this script
and times what systemd would: exec to READY=1 (the daemon serving gRPC; the agent with
its jobs adopted and asking for work), SIGHUP to the READY=1 that ends the reload (the
policy file re-read and put in force), and `./dev.sh run` (the Quick start, already
installed) to the daemon's first SERVING health answer. Prints a table of medians and
maxima; docs/benchmarks.md has the numbers of these machines.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
POLICY = "version: 1\nconsumers:\n  a: {}\n  b: {}\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_datagram(sock: socket.socket, wanted: str, timeout_s: float = 60) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            lines = sock.recv(4096).decode().split("\n")
        except TimeoutError:
            break
        if wanted in lines:
            return time.monotonic()
    raise RuntimeError(f"no {wanted} within {timeout_s} s")


def _serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def daemon_and_reload(root: Path) -> tuple[float, float, float]:
    """(exec → READY, SIGHUP → READY with a new policy, agent exec → READY), in s."""
    notify = root / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    port = _free_port()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify)}
    began = time.monotonic()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "schedulerd.daemon", "--no-config", "--listen",
         f"127.0.0.1:{port}", "--db", str(root / "s.db"), "--policy", str(policy)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    agent: subprocess.Popen[bytes] | None = None
    try:
        ready = _wait_datagram(sock, "READY=1") - began
        policy.write_text(POLICY + "  c: {}\n")
        hup = time.monotonic()
        daemon.send_signal(signal.SIGHUP)
        _wait_datagram(sock, "RELOADING=1")
        reloaded = _wait_datagram(sock, "READY=1") - hup
        began = time.monotonic()
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "--no-config", "--daemon", f"127.0.0.1:{port}",
             "--node", f"bench-{os.getpid()}", "--fake-gpus", "2", "--containment", "pgroup",
             "--state-dir", str(root / "agent"), "--lock-dir", str(root / "locks"),
             "--auth-socket", ""],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        agent_ready = _wait_datagram(sock, "READY=1") - began
        return ready, reloaded, agent_ready
    finally:
        for proc in (agent, daemon):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
        sock.close()


def quick_start(root: Path) -> float:
    """`./dev.sh run` (installed already) to the first SERVING answer, in s."""
    port = _free_port()
    began = time.monotonic()
    run = subprocess.Popen(
        [str(REPO / "dev.sh"), "run", "--listen", f"127.0.0.1:{port}", "--db",
         str(root / "q.db")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        while not _serving(f"127.0.0.1:{port}"):
            if run.poll() is not None:
                raise RuntimeError("./dev.sh run ended")
            time.sleep(0.02)
        return time.monotonic() - began
    finally:
        os.killpg(run.pid, signal.SIGINT)
        run.wait(60)


def _row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"| {name} | {statistics.median(ms):,.0f} | {max(ms):,.0f} |"


NAMES = (
    "daemon: exec → READY=1",
    "daemon: SIGHUP → policy in force (READY=1)",
    "agent: exec → READY=1",
    "./dev.sh run (installed) → serving",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    results: dict[str, list[float]] = {name: [] for name in NAMES}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            measured = (*daemon_and_reload(Path(tmp)), quick_start(Path(tmp)))
        for name, value in zip(NAMES, measured, strict=True):
            results[name].append(value)
    print(f"{args.runs} runs on {os.cpu_count()} cores\n")
    print("| what | median ms | max ms |\n| --- | ---: | ---: |")
    for name, values in results.items():
        print(_row(name, values))


if __name__ == "__main__":
    main()
