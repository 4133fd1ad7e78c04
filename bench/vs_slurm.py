"""The same fair-share workload through Slurm 22.05 and through schedulerd, side by side.

    flock /tmp/bench.lock .venv/bin/python bench/vs_slurm.py      # both, full size (~12 min)
    .venv/bin/python bench/vs_slurm.py --skip-slurm                # schedulerd only
    .venv/bin/python bench/vs_slurm.py --jobs-per-account 200 --sleep 5 --nodes 4   # quick

Slurm comes from ../shared/peers/slurm/setup_and_bench.sh (run its `install` step once, as
root): this script calls its `configure start accounts` steps, drives sbatch and squeue as
that script does, and calls `stop` at the end. schedulerd runs from this checkout: the
daemon and one agent per node (`--fake-gpus`) as subprocesses on 127.0.0.1, in a
temporary folder.

The workload, identical on both sides: NODES x GPUS GPUs; two accounts (Slurm) or leaf
consumers (schedulerd), acct_a with share 1 (user alice) and acct_b with share 3 (user
carol); each submits JOBS one-GPU jobs running `sleep SLEEP`, in alternating chunks of
CHUNK jobs (a, b, a, b, ...), so both are backlogged from the start.

Release: the whole backlog is submitted while nothing can start, then everything is
released at once.
- Slurm: partition `gpu` DOWN while submitting, `scontrol update ... State=UP` to release
  (as setup_and_bench.sh does);
- schedulerd: every agent is started and registered, then every node is drained
  (Admin.DrainNode); the backlog is submitted; release = undraining every node, one
  UndrainNode RPC each, all sent at once (the clock starts before the first).

Measured:
- submissions per second, sequential: sbatch, one process per job (Slurm) vs unary
  SubmitJob RPCs from one Client in this process (schedulerd); and, since sbatch is a
  process per job, a sample of `schedctl submit` invocations (each then cancelled: they
  are not part of the backlog);
- after release, every SAMPLE seconds: running (Slurm R|CF, schedulerd RUNNING: both the
  scheduler's own view of an allocation) and pending jobs per account (squeue; schedulerd:
  ListJobs for the running ones, ListConsumers' pending_jobs, as of the last cycle);
- from the schedulers' records (sacct; the daemon's job list): the first start, the start
  that fills the last GPU, the last start and the last end, in seconds after release;
- the 1:3 split: acct_b's fraction of busy GPUs in each sample taken while both accounts
  still had jobs waiting; "reached" is the first sample from which every later such
  sample stays within +-BAND of 0.75;
- CPU seconds used by each side's daemons from release until the queue is empty.

Prints a Markdown table (ratio = schedulerd / Slurm) and writes the samples as CSV next
to the logs (the folder is printed). A benchmark, not a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from schedulerd.api.v1 import admin_pb2, jobs_pb2
from schedulerd.client import Client

REPO = Path(__file__).resolve().parent.parent
SLURM_SCRIPT = REPO.parent / "shared" / "peers" / "slurm" / "setup_and_bench.sh"
ACCOUNTS = {"acct_a": ("alice", 1), "acct_b": ("carol", 3)}  # account: (user, share)
TARGET_B = 3 / 4
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- what both sides report


@dataclass
class Sample:
    t: float  # seconds after release
    running: dict[str, int]
    pending: dict[str, int]
    load: float = field(default_factory=lambda: os.getloadavg()[0])


@dataclass
class Result:
    system: str
    submit_rate: float = math.nan  # jobs/s, sequential
    submit_failures: int = 0
    chunk_rates: list[float] = field(default_factory=list)  # jobs/s of each chunk, in order
    cli_rate: float = math.nan  # jobs/s, one process per job
    cli_jobs: int = 0
    starts: list[float] = field(default_factory=list)  # seconds after release, sorted
    ends: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    cpu_control_s: float = math.nan  # central daemons, release until empty
    cpu_nodes_s: float = math.nan  # node daemons (slurmd / agents), same window
    cpu_machine_s: float = math.nan  # every process on the machine, same window
    drain_s: float = math.nan  # release until the poll saw no job at all
    submit_load: float = math.nan  # 1-min load average after submitting
    notes: list[str] = field(default_factory=list)


def workload(jobs_per_account: int, chunk: int) -> list[tuple[str, int]]:
    """(account, jobs) chunks in submission order: a, b, a, b, ..."""
    out: list[tuple[str, int]] = []
    left = dict.fromkeys(ACCOUNTS, jobs_per_account)
    while any(left.values()):
        for acct in ACCOUNTS:
            n = min(chunk, left[acct])
            if n:
                out.append((acct, n))
                left[acct] -= n
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes and their waited-for children, in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def machine_cpu_seconds() -> float:
    """CPU time used by everything on the machine so far (all cores, not idle/iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def poll_until_empty(
    probe: Callable[[], tuple[dict[str, int], dict[str, int]]],
    t0: float,
    every_s: float,
    timeout_s: float,
) -> tuple[list[Sample], float]:
    """Sample (running, pending) per account every `every_s` until no job is left."""
    samples: list[Sample] = []
    k = 0
    while True:
        now = time.time()
        running, pending = probe()
        samples.append(Sample(now - t0, running, pending))
        if not any(running.values()) and not any(pending.values()):
            return samples, now - t0
        if now - t0 > timeout_s:
            raise TimeoutError(f"jobs still there {timeout_s:g} s after release")
        k += 1
        time.sleep(max(0.0, t0 + k * every_s - time.time()))


# ---------------------------------------------------------------- Slurm


class Slurm:
    def __init__(self, script: Path, run_dir: Path, nodes: int, gpus: int) -> None:
        self.script = script
        self.run_dir = run_dir
        self.conf = run_dir / "etc" / "slurm.conf"
        self.env = {
            **os.environ,
            "RUN": str(run_dir),
            "NNODES": str(nodes),
            "GPUS": str(gpus),
            "SLURM_CONF": str(self.conf),
        }

    def steps(self, *steps: str) -> None:
        subprocess.run(["bash", str(self.script), *steps], env=self.env, check=True)

    def cmd(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, check=True, capture_output=True, text=True).stdout

    def as_user(self, user: str, shell: str) -> subprocess.CompletedProcess[str]:
        argv = ["runuser", "-u", user, "--", "env", f"SLURM_CONF={self.conf}"]
        return subprocess.run(
            [*argv, "bash", "-c", shell], env=self.env, capture_output=True, text=True
        )

    def pids(self, pattern: str) -> list[int]:
        return [int(p.read_text()) for p in (self.run_dir / "pids").glob(pattern)]

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        running = dict.fromkeys(ACCOUNTS, 0)
        pending = dict.fromkeys(ACCOUNTS, 0)
        for line in self.cmd("squeue", "-h", "-o", "%t %a").splitlines():
            st, acct = line.split()
            if st in ("R", "CF"):
                running[acct] = running.get(acct, 0) + 1
            elif st == "PD":
                pending[acct] = pending.get(acct, 0) + 1
        return running, pending


def run_slurm(args: argparse.Namespace) -> Result:
    res = Result("Slurm")
    slurm = Slurm(args.slurm_script, args.slurm_run, args.nodes, args.gpus_per_node)
    print(f"== Slurm: configure start accounts ({args.nodes} nodes x {args.gpus_per_node} GPUs)")
    slurm.steps("configure", "start", "accounts")
    try:
        version = slurm.cmd("sinfo", "-V").strip()
        res.notes.append(version)
        slurm.cmd("scontrol", "update", "PartitionName=gpu", "State=DOWN")
        iso0 = time.strftime("%Y-%m-%dT%H:%M:%S")
        time.sleep(1)  # sacct -S has 1 s resolution

        print(f"== Slurm: sbatch x {2 * args.jobs_per_account}, partition DOWN")
        began = time.perf_counter()
        for acct, n in workload(args.jobs_per_account, args.chunk):
            user = ACCOUNTS[acct][0]
            loop = (
                f"cd /tmp; for i in $(seq {n}); do sbatch -Q -A {acct} --gres=gpu:1 "
                f"-o /dev/null --wrap 'sleep {args.sleep:g}' || echo FAIL; done"
            )
            c = time.perf_counter()
            out = slurm.as_user(user, loop)
            res.chunk_rates.append(n / (time.perf_counter() - c))
            res.submit_failures += out.stdout.count("FAIL")
        took = time.perf_counter() - began
        res.submit_rate = 2 * args.jobs_per_account / took
        res.submit_load = os.getloadavg()[0]
        res.cli_rate, res.cli_jobs = res.submit_rate, 2 * args.jobs_per_account
        _, pending = slurm.counts()
        print(f"   {took:.1f} s, {res.submit_rate:.0f} jobs/s, pending {pending}")

        control = slurm.pids("slurmctld.pid") + slurm.pids("slurmdbd.pid")
        control += slurm.pids("mariadbd.pid")
        node_pids = slurm.pids("slurmd.*.pid")
        c0, n0, m0 = cpu_seconds(control), cpu_seconds(node_pids), machine_cpu_seconds()
        print("== Slurm: release (partition UP), sampling until the queue is empty")
        t0 = time.time()
        slurm.cmd("scontrol", "update", "PartitionName=gpu", "State=UP")
        res.samples, res.drain_s = poll_until_empty(slurm.counts, t0, args.sample, args.timeout)
        res.cpu_control_s = cpu_seconds(control) - c0
        res.cpu_nodes_s = cpu_seconds(node_pids) - n0
        res.cpu_machine_s = machine_cpu_seconds() - m0
        res.notes.append(
            "Slurm CPU: slurmctld+slurmdbd+mariadbd; slurmd CPU excludes slurmstepd "
            "(a process per job, not a child slurmd waits for)"
        )

        time.sleep(3)  # let the job records reach slurmdbd
        fmt = "JobIDRaw,Start,End,State,Account"
        rows = slurm.cmd("sacct", "-a", "-X", "-n", "-P", "-S", iso0, "-o", fmt).splitlines()
        states: dict[str, int] = {}
        for row in rows:
            _, start, end, state, _acct = row.split("|")
            states[state] = states.get(state, 0) + 1
            if start not in ("Unknown", "None", ""):
                res.starts.append(_sacct_time(start) - t0)
            if end not in ("Unknown", "None", ""):
                res.ends.append(_sacct_time(end) - t0)
        res.notes.append(
            f"Slurm job states (sacct): {states}; sacct's times are whole seconds, so Slurm's "
            "start and end figures are +-0.5 s"
        )
    finally:
        print("== Slurm: stop")
        slurm.steps("stop")
    res.starts.sort()
    res.ends.sort()
    return res


def _sacct_time(text: str) -> float:
    """sacct's times are whole seconds, truncated: the middle of that second."""
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S")) + 0.5


# ---------------------------------------------------------------- schedulerd


POLICY = """\
# bench/vs_slurm.py: Slurm's fair-share tree of setup_and_bench.sh, as consumers.
version: 1
users: "*"
consumers:
  acct_a: {share: 1, users: [alice, bob]}
  acct_b: {share: 3, users: [carol, dave]}
"""


class Schedulerd:
    """The daemon and its agents as subprocesses, as tests/harness.py starts them."""

    def __init__(self, root: Path, tick_s: float) -> None:
        self.root = root
        self.address = f"127.0.0.1:{_free_port()}"
        (root / "policy.yaml").write_text(POLICY)
        self.tick_s = tick_s
        self.daemon: subprocess.Popen[bytes] | None = None
        self.agents: list[subprocess.Popen[bytes]] = []

    def _spawn(self, log: str, *argv: str) -> subprocess.Popen[bytes]:
        with open(self.root / log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT, cwd=self.root
            )

    def start_daemon(self) -> None:
        self.daemon = self._spawn(
            "daemon.log",
            *("-m", "schedulerd.daemon", "--listen", self.address),
            *("--db", str(self.root / "schedulerd.db"), "--policy", "policy.yaml"),
            *("--tick", str(self.tick_s)),
        )
        deadline = time.monotonic() + 60
        while not self._serving():
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start; see {self.root}/daemon.log")
            time.sleep(0.2)

    def _serving(self) -> bool:
        try:
            with grpc.insecure_channel(self.address) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    def start_agent(self, node: str, gpus: int) -> None:
        self.agents.append(
            self._spawn(
                f"agent-{node}.log",
                *("-m", "agent", "--daemon", self.address, "--node", node),
                *("--fake-gpus", str(gpus), "--state-dir", "agents"),
            )
        )

    def stop(self) -> None:
        procs = [*self.agents, self.daemon]
        for p in procs:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in procs:
            if p is None:
                continue
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_schedulerd(args: argparse.Namespace, root: Path) -> Result:
    res = Result("schedulerd")
    nodes = [f"gpu{i:02d}" for i in range(1, args.nodes + 1)]
    sd = Schedulerd(root, args.tick)
    client = Client(sd.address, timeout_s=60)
    print(f"== schedulerd: daemon + {args.nodes} agents x {args.gpus_per_node} fake GPUs")
    try:
        sd.start_daemon()
        began = time.perf_counter()
        for node in nodes:
            sd.start_agent(node, args.gpus_per_node)
        _wait(
            lambda: sum(1 for n in client.nodes() if n.state == 1) == len(nodes),
            "every agent to register",
            120,
        )
        res.notes.append(
            f"schedulerd: {args.nodes} agents started and registered in "
            f"{time.perf_counter() - began:.1f} s (not part of any figure)"
        )
        for node in nodes:
            client.drain(node, "vs_slurm: holding the backlog until release")

        print(f"== schedulerd: Client.submit x {2 * args.jobs_per_account}, nodes drained")
        command = ["sleep", f"{args.sleep:g}"]
        began = time.perf_counter()
        for acct, n in workload(args.jobs_per_account, args.chunk):
            c = time.perf_counter()
            for _ in range(n):
                client.submit(f"/{acct}", command, 1, user=ACCOUNTS[acct][0])
            res.chunk_rates.append(n / (time.perf_counter() - c))
        took = time.perf_counter() - began
        res.submit_rate = 2 * args.jobs_per_account / took
        res.submit_load = os.getloadavg()[0]
        print(f"   {took:.1f} s, {res.submit_rate:.0f} jobs/s")

        if args.cli_sample:
            res.cli_rate, res.cli_jobs = _schedctl_sample(client, sd.address, args, command)
            print(f"   schedctl submit x {res.cli_jobs}: {res.cli_rate:.1f} jobs/s")

        probe = _schedulerd_probe(client)
        _, pending = probe()
        print(f"   pending {pending}")
        assert sd.daemon is not None
        control, node_pids = [sd.daemon.pid], [a.pid for a in sd.agents]
        c0, n0, m0 = cpu_seconds(control), cpu_seconds(node_pids), machine_cpu_seconds()
        print("== schedulerd: release (undrain every node), sampling until no job is left")
        t0 = time.time()
        # All at once, as one `State=UP` is for Slurm: one undrain after another would
        # put a scheduling cycle (and its starts) between each two.
        undrains = [
            client.admin.UndrainNode.future(admin_pb2.UndrainNodeRequest(node=n), timeout=60)
            for n in nodes
        ]
        for u in undrains:
            u.result()
        res.samples, res.drain_s = poll_until_empty(probe, t0, args.sample, args.timeout)
        res.cpu_control_s = cpu_seconds(control) - c0
        res.cpu_nodes_s = cpu_seconds(node_pids) - n0
        res.cpu_machine_s = machine_cpu_seconds() - m0
        res.notes.append(
            "schedulerd CPU: the daemon; agents' CPU includes their finished jobs (sleep)"
        )

        states: dict[str, int] = {}
        for job in client.list_jobs(states=["SUCCEEDED", "FAILED", "CANCELLED"]):
            name = _state_name(job.state)
            states[name] = states.get(name, 0) + 1
            if job.start_time.seconds:
                res.starts.append(job.start_time.ToNanoseconds() / 1e9 - t0)
                res.ends.append(job.end_time.ToNanoseconds() / 1e9 - t0)
        res.notes.append(f"schedulerd job states: {states} (cancelled: the schedctl sample)")
    finally:
        client.close()
        sd.stop()
    res.starts.sort()
    res.ends.sort()
    return res


def _state_name(state: int) -> str:
    return str(jobs_pb2.JobState.Name(state))


def _schedulerd_probe(client: Client) -> Callable[[], tuple[dict[str, int], dict[str, int]]]:
    def probe() -> tuple[dict[str, int], dict[str, int]]:
        running = dict.fromkeys(ACCOUNTS, 0)
        for job in client.list_jobs(states=["RUNNING"]):
            acct = job.spec.consumer.strip("/")
            running[acct] = running.get(acct, 0) + 1
        pending = {
            c.path.strip("/"): c.pending_jobs for c in client.consumers().consumers if c.leaf
        }
        return running, pending

    return probe


def _schedctl_sample(
    client: Client, address: str, args: argparse.Namespace, command: list[str]
) -> tuple[float, int]:
    """`schedctl submit` as a person would type it, one process per job; the jobs are
    cancelled at once (still waiting: the nodes are drained) so the backlog is unchanged."""
    schedctl = shutil.which("schedctl", path=str(Path(sys.executable).parent)) or "schedctl"
    ids: list[int] = []
    accts = list(ACCOUNTS)
    began = time.perf_counter()
    for i in range(args.cli_sample):
        acct = accts[i % len(accts)]
        user = ACCOUNTS[acct][0]
        argv = [schedctl, "--daemon", address, "submit", "--consumer", f"/{acct}", "--user", user]
        out = subprocess.run(
            [*argv, "--", *command],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        ids.append(int(out.split()[2]))  # "submitted job N to /acct"
    took = time.perf_counter() - began
    for job_id in ids:
        client.cancel(job_id)
    return args.cli_sample / took, args.cli_sample


def _wait(probe: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


# ---------------------------------------------------------------- figures and the table


@dataclass
class Figures:
    first_start: float
    all_busy: float  # the G-th start
    last_start: float
    last_end: float
    busy_while_waiting: float  # mean fraction of GPUs running while jobs waited
    split_reached: float  # s; inf when never
    split_mean: float
    split_mad: float
    split_in_band: float  # fraction of both-backlogged samples within the band
    split_samples: int
    backlogged_s: float  # last both-backlogged sample


def figures(res: Result, gpus: int, band: float) -> Figures:
    both = [
        s
        for s in res.samples
        if all(s.pending.get(a, 0) > 0 for a in ACCOUNTS) and sum(s.running.values()) > 0
    ]
    fracs = [s.running.get("acct_b", 0) / sum(s.running.values()) for s in both]
    reached = math.inf
    for s, f in zip(reversed(both), reversed(fracs), strict=True):
        if abs(f - TARGET_B) > band:
            break
        reached = s.t
    waiting = [s for s in res.samples if sum(s.pending.values()) > 0]
    nan = math.nan
    return Figures(
        first_start=res.starts[0] if res.starts else nan,
        all_busy=res.starts[gpus - 1] if len(res.starts) >= gpus else nan,
        last_start=res.starts[-1] if res.starts else nan,
        last_end=res.ends[-1] if res.ends else nan,
        busy_while_waiting=(
            statistics.mean(sum(s.running.values()) for s in waiting) / gpus if waiting else nan
        ),
        split_reached=reached,
        split_mean=statistics.mean(fracs) if fracs else nan,
        split_mad=statistics.mean(abs(f - TARGET_B) for f in fracs) if fracs else nan,
        split_in_band=(
            sum(1 for f in fracs if abs(f - TARGET_B) <= band) / len(fracs) if fracs else nan
        ),
        split_samples=len(fracs),
        backlogged_s=both[-1].t if both else nan,
    )


def _mean_load(res: Result) -> float:
    return statistics.mean(s.load for s in res.samples) if res.samples else math.nan


def _num(x: float, digits: int = 1) -> str:
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "never"
    return f"{x:,.{digits}f}"


def _ratio(a: float, b: float) -> str:
    if any(math.isnan(v) or math.isinf(v) for v in (a, b)) or a == 0:
        return "–"
    return f"{b / a:.2f}"


def table(slurm: Result | None, sched: Result | None, args: argparse.Namespace) -> str:
    gpus = args.nodes * args.gpus_per_node
    n = 2 * args.jobs_per_account
    empty = Result("–")
    s, d = slurm or empty, sched or empty
    fs = figures(s, gpus, args.band) if slurm else None
    fd = figures(d, gpus, args.band) if sched else None
    waves = math.ceil(n / gpus)
    band = f"{args.band * 100:g}"

    def f(fig: Figures | None, name: str) -> float:
        return math.nan if fig is None else float(getattr(fig, name))

    rows: list[tuple[str, float, float, int, bool]] = [
        # label, slurm, schedulerd, digits, ratio?
        ("submissions/s, sequential (sbatch; Client.submit RPC)", s.submit_rate,
         d.submit_rate, 0, True),
        (f"submissions/s, one process per job (sbatch; schedctl submit x {d.cli_jobs})",
         s.cli_rate, d.cli_rate, 1, True),
        ("first job started, s after release", f(fs, "first_start"), f(fd, "first_start"), 1,
         True),
        (f"all {gpus} GPUs busy ({gpus}th start), s", f(fs, "all_busy"), f(fd, "all_busy"), 1,
         True),
        (f"all {n} jobs started, s (ideal {(waves - 1) * args.sleep:g})", f(fs, "last_start"),
         f(fd, "last_start"), 1, True),
        (f"all jobs ended, s (ideal {waves * args.sleep:g})", f(fs, "last_end"),
         f(fd, "last_end"), 1, True),
        ("GPUs busy while jobs waited, %", 100 * f(fs, "busy_while_waiting"),
         100 * f(fd, "busy_while_waiting"), 1, True),
        (f"1:3 split reached (acct_b within ±{band} pp of 75% and stays), s",
         f(fs, "split_reached"), f(fd, "split_reached"), 1, True),
        ("acct_b's share of busy GPUs while both backlogged, mean %", 100 * f(fs, "split_mean"),
         100 * f(fd, "split_mean"), 1, False),
        ("mean absolute deviation from 75%, pp", 100 * f(fs, "split_mad"),
         100 * f(fd, "split_mad"), 1, True),
        (f"samples within ±{band} pp, %", 100 * f(fs, "split_in_band"),
         100 * f(fd, "split_in_band"), 0, False),
        ("both backlogged until, s after release (samples)", f(fs, "backlogged_s"),
         f(fd, "backlogged_s"), 0, False),
        ("1-min load average at the end of submitting", s.submit_load, d.submit_load, 1,
         False),
        ("1-min load average after release, mean of the samples", _mean_load(s),
         _mean_load(d), 1, False),
        ("CPU s, central daemons, release → empty", s.cpu_control_s, d.cpu_control_s, 1, True),
        ("CPU s, node daemons (16 slurmd; 16 agents)", s.cpu_nodes_s, d.cpu_nodes_s, 1, True),
        ("CPU s, whole machine (everything running), same window", s.cpu_machine_s,
         d.cpu_machine_s, 1, True),
    ]  # fmt: skip
    lines = ["| metric | Slurm | schedulerd | ratio |", "| --- | ---: | ---: | ---: |"]
    for label, a, b, digits, with_ratio in rows:
        if label.startswith("both backlogged") and fs is not None and fd is not None:
            a_txt = f"{_num(a, 0)} ({fs.split_samples})"
            b_txt = f"{_num(b, 0)} ({fd.split_samples})"
        else:
            a_txt, b_txt = _num(a, digits), _num(b, digits)
        lines.append(f"| {label} | {a_txt} | {b_txt} | {_ratio(a, b) if with_ratio else ''} |")
    return "\n".join(lines).replace("16 slurmd | 16 agents", f"{args.nodes} slurmd | agents")


def write_samples(res: Result, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", *(f"running_{a}" for a in ACCOUNTS), *(f"pending_{a}" for a in ACCOUNTS)])
        for s in res.samples:
            w.writerow(
                [f"{s.t:.2f}"]
                + [s.running.get(a, 0) for a in ACCOUNTS]
                + [s.pending.get(a, 0) for a in ACCOUNTS]
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs-per-account", type=int, default=1000)
    p.add_argument("--sleep", type=float, default=10.0, help="seconds each job sleeps")
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--chunk", type=int, default=25, help="jobs per alternating chunk")
    p.add_argument("--cli-sample", type=int, default=100, help="schedctl submit calls; 0: none")
    p.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--band", type=float, default=0.05, help="split tolerance (0.05 = 5 pp)")
    p.add_argument("--tick", type=float, default=1.0, help="schedulerd --tick (its default)")
    p.add_argument("--timeout", type=float, default=1800, help="give up this long after release")
    p.add_argument("--skip-slurm", action="store_true")
    p.add_argument("--skip-schedulerd", action="store_true")
    p.add_argument("--slurm-script", type=Path, default=SLURM_SCRIPT)
    p.add_argument("--slurm-run", type=Path, default=Path("/tmp/slurm_peer_run"))
    p.add_argument("--keep", action="store_true", help="keep the agents' job logs too")
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where schedulerd's temporary folder goes (default: the system's; /dev/shm "
        "shows what SQLite's fsyncs cost)",
    )
    return p.parse_args(argv)


@contextlib.contextmanager
def work_dir(keep: bool, parent: Path | None) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="vs_slurm-", dir=parent))
    try:
        yield root
    finally:
        if not keep:
            shutil.rmtree(root / "agents", ignore_errors=True)  # thousands of job logs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.skip_slurm and not shutil.which("sbatch"):
        sys.exit("sbatch not found: run setup_and_bench.sh install first, or --skip-slurm")
    load0 = os.getloadavg()
    began = time.strftime("%Y-%m-%d %H:%M:%S")
    slurm = sched = None
    with work_dir(args.keep, args.dir) as root:
        if not args.skip_slurm:
            slurm = run_slurm(args)
            write_samples(slurm, root / "slurm_samples.csv")
        if not args.skip_schedulerd:
            sched = run_schedulerd(args, root)
            write_samples(sched, root / "schedulerd_samples.csv")
        print()
        print(
            f"{args.nodes} nodes x {args.gpus_per_node} GPUs, {args.jobs_per_account} one-GPU "
            f"jobs per account (acct_a share 1, acct_b share 3), each `sleep {args.sleep:g}`, "
            f"submitted in alternating chunks of {args.chunk}; samples every {args.sample:g} s."
        )
        print(
            f"Started {began}; {os.cpu_count()} cores, {platform.python_version()}; "
            f"load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f}."
        )
        print()
        print(table(slurm, sched, args))
        print()
        for r in (slurm, sched):
            for note in r.notes if r else []:
                print(f"- {note}")
            if r and len(r.chunk_rates) >= 10:
                tenth = len(r.chunk_rates) // 10
                first = statistics.mean(r.chunk_rates[:tenth])
                last = statistics.mean(r.chunk_rates[-tenth:])
                print(
                    f"- {r.system}: sequential submissions/s over the first tenth of the "
                    f"backlog {first:.0f}, over the last tenth {last:.0f}"
                )
            if r and r.submit_failures:
                print(f"- {r.system}: {r.submit_failures} submissions failed")
        print(f"- samples and logs: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
