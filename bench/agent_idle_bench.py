"""What an agent costs the node it runs on: CPU seconds per minute, idle and with jobs, next to
slurmd's in the same run (issue 15, "lighter agents").

    .venv/bin/python bench/agent_idle_bench.py [--minutes 1] [--jobs 4] [--heartbeat 30]
        [--before /tmp/agent-before] [--slurm-peer shared/peers/slurm [--slurm-jobs 4]]
        [--grpc-floor]

Each agent is a real `python -m agent --fake-gpus 8`, registered to a real daemon (this
checkout's) on 127.0.0.1, measured over the window from /proc/<pid>/task/*/schedstat (the
CPU time of every thread, in ns: utime and stime only count 10 ms ticks, too coarse for an
idle process): first idle, then with --jobs one-GPU `sleep` jobs running (their shims
measured apart: one per job, as slurmstepd is for Slurm). --heartbeat N measures this
checkout's agent again under a daemon started with `--heartbeat N` (its default is 2 s).
--before runs the same for the agent code of another checkout (e.g. `git worktree add
--detach /tmp/agent-before main`): only the agent's PYTHONPATH changes, the daemon stays
this checkout's.

--slurm-peer starts the Slurm peer (`NNODES=16 ./setup_and_bench.sh configure start
accounts`), measures every slurmd over the same window, with --slurm-jobs N then N one-GPU
`sleep` jobs of its user alice on gpu01 (that slurmd and the jobs' slurmstepds), and stops
it (`./setup_and_bench.sh stop`) whatever happens. Without it, slurmds already running (pid
files under /tmp/slurm_peer_run/pids) are measured if there are any.

--grpc-floor first measures the floor under any agent built on grpcio: a process that
opens a grpc.aio channel to the daemon, makes one call and then sends nothing, thread by
thread; then the same process with the channel closed (grpc still loaded); and, as the
control, the same asyncio process without grpc (bench/_grpc_floor.py).

Prints a table. Timings on a shared machine are noisy: say so next to the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _cluster import REPO, BenchCluster, wait_for

from schedulerd.api.v1 import jobs_pb2
from schedulerd.client import ClientError

POLICY = "version: 1\nrun_as_root: true\nconsumers:\n  a: {}\n"
SLURM_PIDS = Path("/tmp/slurm_peer_run/pids")


def cpu_ns(pid: int) -> int:
    """CPU time of the whole process so far, every thread of it, in ns (schedstat: exact,
    where utime and stime count 10 ms ticks); 0 if it is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


def threads_ms_per_minute(pid: int, seconds: float) -> dict[str, tuple[int, float]]:
    """CPU ms per minute of a process's threads over `seconds`, by thread name (the kernel's
    comm: gRPC names its own): {name: (how many threads, ms per minute)}."""

    def sample() -> dict[str, tuple[str, int]]:
        out = {}
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                name = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
                ns = int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
                out[task] = (name, ns)
        return out

    before = sample()
    time.sleep(seconds)
    by_name: dict[str, tuple[int, float]] = {}
    for task, (name, ns) in sample().items():
        count, ms = by_name.get(name, (0, 0.0))
        spent = (ns - before.get(task, (name, 0))[1]) / 1e6 * 60.0 / seconds
        by_name[name] = (count + 1, ms + spent)
    return by_name


def children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def per_minute(pids: Callable[[], list[int]], seconds: float) -> list[float]:
    """CPU seconds per minute of each pid over `seconds` (pids listed at the start)."""
    chosen = pids()
    before = [cpu_ns(p) for p in chosen]
    time.sleep(seconds)
    after = [cpu_ns(p) for p in chosen]
    return [(a - b) / 1e9 * 60.0 / seconds for a, b in zip(after, before, strict=True)]


class AgentRun:
    """A daemon of this checkout and one agent whose code comes from `agent_repo`."""

    def __init__(self, root: Path, agent_repo: Path, gpus: int, heartbeat: float | None) -> None:
        self.cluster = BenchCluster(root, POLICY)
        self.heartbeat = heartbeat  # the daemon's --heartbeat; None: its default
        self.root = root
        self.agent_repo = agent_repo
        self.gpus = gpus
        self.agent: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        flags = () if self.heartbeat is None else ("--heartbeat", str(self.heartbeat))
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - lives with the process
        self.cluster.daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "schedulerd.daemon",
                *("--listen", self.cluster.address, "--db", str(self.root / "s.db")),
                *("--policy", str(self.cluster.policy), *flags),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )

        def serving() -> bool:
            try:
                self.cluster.client.nodes()
            except ClientError:
                return False
            return True

        wait_for("the daemon to serve", serving)
        env = dict(os.environ, PYTHONPATH=str(self.agent_repo))
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - lives with the process
        self.agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                *("--daemon", self.cluster.address, "--node", "bench-idle"),
                *("--fake-gpus", str(self.gpus), "--state-dir", str(self.root / "agents")),
                *("--auth-socket", str(self.root / "auth.sock")),
                *("--lock-dir", str(self.root / "locks")),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=env,
        )
        self.cluster.wait_nodes_up(1)  # the daemon serves, and the agent is registered

    def run_jobs(self, count: int) -> None:
        for _ in range(count):
            self.cluster.client.submit("/a", ["sleep", "3600"], 1)

        def running() -> bool:
            jobs = self.cluster.client.list_jobs()
            return sum(1 for j in jobs if j.state == jobs_pb2.RUNNING) >= count

        wait_for(f"{count} jobs running", running)

    def stop(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(5)
        self.cluster.stop()


def measure_agent(
    label: str, repo: Path, args: argparse.Namespace, heartbeat: float | None = None
) -> list[tuple[str, str]]:
    rows = []
    if heartbeat is not None:
        label += f" (daemon --heartbeat {heartbeat:g})"
    with tempfile.TemporaryDirectory(prefix="agent-idle-") as tmp:
        run = AgentRun(Path(tmp), repo, args.gpus, heartbeat)
        try:
            run.start()
            assert run.agent is not None
            pid = run.agent.pid
            time.sleep(args.settle)
            idle = per_minute(lambda: [pid], args.minutes * 60)[0]
            rows.append((f"agent {label}, idle", f"{idle:.4f}"))
            if args.jobs:
                run.run_jobs(args.jobs)
                time.sleep(args.settle)
                shims = children(pid)
                got = per_minute(lambda: [pid, *shims], args.minutes * 60)
                rows.append((f"agent {label}, {args.jobs} jobs running", f"{got[0]:.4f}"))
                rows.append(
                    (
                        f"  its {len(shims)} shims, each (mean)",
                        f"{sum(got[1:]) / max(1, len(shims)):.4f}",
                    )
                )
        finally:
            run.stop()
    return rows


def measure_grpc_floor(args: argparse.Namespace) -> list[tuple[str, str]]:
    """What holding gRPC costs a process that does nothing (bench/_grpc_floor.py): the
    floor under any agent built on grpcio, next to the same asyncio process without it."""
    rows = []
    probe = [sys.executable, str(REPO / "bench" / "_grpc_floor.py")]
    with tempfile.TemporaryDirectory(prefix="grpc-floor-") as tmp:
        cluster = BenchCluster(Path(tmp), POLICY)
        cluster.start_daemon()
        try:
            for label, argv in (
                ("asyncio process, no grpc (control)", ["--no-grpc"]),
                ("grpc.aio channel open, nothing sent", [cluster.address]),
            ):
                proc = subprocess.Popen(
                    [*probe, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    env=dict(os.environ, PYTHONPATH=str(REPO)),
                )  # fmt: skip
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    phases = [label] if argv == ["--no-grpc"] else [label, "grpc, channel closed"]
                    for i, phase in enumerate(phases):
                        if i:
                            proc.stdin.write(b"close\n")
                            proc.stdin.flush()
                        word = proc.stdout.readline().decode().strip()
                        if word not in ("open", "closed"):
                            raise SystemExit(f"the floor probe said {word!r}")
                        time.sleep(args.settle)
                        threads = threads_ms_per_minute(proc.pid, args.minutes * 60)
                        total = sum(ms for _, ms in threads.values()) / 1000
                        rows.append((phase, f"{total:.4f}"))
                        for name, (count, ms) in sorted(threads.items(), key=lambda t: -t[1][1]):
                            if ms >= 0.05:
                                rows.append((f"  {name} ({count} threads)", f"{ms / 1000:.4f}"))
                finally:
                    proc.stdin.close()
                    proc.wait(30)
        finally:
            cluster.stop()
    return rows


def slurmd_pids() -> list[int]:
    pids = []
    for f in sorted(SLURM_PIDS.glob("slurmd.*.pid")):
        try:
            pid = int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if Path(f"/proc/{pid}/comm").exists() and Path(f"/proc/{pid}/comm").read_text().strip() == (
            "slurmd"
        ):
            pids.append(pid)
    return pids


def slurmstepds() -> list[int]:
    """The slurmstepd processes of the peer's jobs (their command lines name the step)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(entry.path, "comm").read_text().strip() == "slurmstepd":
                    out.append(int(entry.name))
    return out


def slurm_env() -> dict[str, str]:
    return dict(os.environ, SLURM_CONF=str(SLURM_PIDS.parent / "etc" / "slurm.conf"))


def run_slurm_jobs(count: int) -> None:
    """`count` one-GPU sleep jobs of alice (the peer's user) on node gpu01, running."""
    for _ in range(count):
        subprocess.run(
            ["runuser", "-u", "alice", "--", "env", f"SLURM_CONF={slurm_env()['SLURM_CONF']}",
             "sbatch", "-Q", "-A", "acct_a", "--gres=gpu:1", "-w", "gpu01", "-o", "/dev/null",
             "--chdir", "/tmp", "--wrap", "sleep 3600"],
            check=True,
        )  # fmt: skip

    def running() -> bool:
        out = subprocess.run(
            ["squeue", "-h", "-t", "R", "-o", "%i"],
            capture_output=True,
            text=True,
            env=slurm_env(),
            check=False,
        ).stdout
        return len(out.split()) >= count and len(slurmstepds()) >= count

    wait_for(f"{count} Slurm jobs running", running)


def measure_slurmd(args: argparse.Namespace) -> list[tuple[str, str]]:
    peer = Path(args.slurm_peer) if args.slurm_peer else None
    env = dict(os.environ, NNODES="16")
    if peer is not None:
        start = ["./setup_and_bench.sh", "configure", "start", "accounts"]
        subprocess.run(start, cwd=peer, env=env, check=True)
    try:
        pids = slurmd_pids()
        if not pids:
            return [("slurmd", "not running (pass --slurm-peer)")]
        time.sleep(args.settle)
        got = per_minute(slurmd_pids, args.minutes * 60)
        rows = [
            (f"slurmd, idle (mean of {len(got)})", f"{sum(got) / len(got):.4f}"),
            ("slurmd, idle (the busiest)", f"{max(got):.4f}"),
        ]
        if args.slurm_jobs:
            run_slurm_jobs(args.slurm_jobs)
            time.sleep(args.settle)
            first = slurmd_pids()[0]  # gpu01's, where the jobs run
            steps = slurmstepds()
            got = per_minute(lambda: [first, *steps], args.minutes * 60)
            rows.append((f"slurmd gpu01, {args.slurm_jobs} jobs running", f"{got[0]:.4f}"))
            rows.append(
                (
                    f"  its {len(steps)} slurmstepds, each (mean)",
                    f"{sum(got[1:]) / max(1, len(steps)):.4f}",
                )
            )
        return rows
    finally:
        if peer is not None:
            subprocess.run(["./setup_and_bench.sh", "stop"], cwd=peer, env=env, check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=1.0, help="each window (default 1)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds before each window")
    p.add_argument("--jobs", type=int, default=4, help="jobs running in the second window")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--before", type=Path, help="a checkout whose agent is measured first")
    p.add_argument("--no-after", action="store_true", help="skip this checkout's agent")
    p.add_argument("--slurm-peer", help="shared/peers/slurm: start, measure and stop slurmd")
    p.add_argument(
        "--slurm-jobs", type=int, default=0, help="then this many sleep jobs on slurmd gpu01"
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        action="append",
        default=[],
        help="also measure this checkout's agent with the daemon's --heartbeat this (repeatable)",
    )
    p.add_argument(
        "--grpc-floor",
        action="store_true",
        help="also measure a process that holds an idle grpc.aio channel and does nothing",
    )
    args = p.parse_args()
    rows: list[tuple[str, str]] = []
    if args.grpc_floor:
        rows += measure_grpc_floor(args)
    if args.before is not None:
        rows += measure_agent("before", args.before.resolve(), args)
    if not args.no_after:
        label = "after" if args.before else "of this checkout"
        rows += measure_agent(label, REPO, args)
        for heartbeat in args.heartbeat:
            rows += measure_agent(label, REPO, args, heartbeat)
    rows += measure_slurmd(args)
    width = max(len(r[0]) for r in rows)
    print(f"{'process':<{width}}  CPU s per minute")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
