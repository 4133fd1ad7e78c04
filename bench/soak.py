"""Chaos soak: the scheduler's first promise (docs/fencing.md) under random faults.

A real daemon (`python -m schedulerd.daemon`, short tick, `--heartbeat 0.5`, a short
`--node-timeout`) and real agents (`python -m agent --fake-gpus N`, nodes named
`soak-<pid>-<i>`, real cgroups) run for `--minutes`, while three seeded threads inject:

- submissions to two consumers: rigid jobs of 1-4 GPUs and multi-node ones (6 or 8 GPUs),
  python one-liners that sleep a few seconds, some exiting 3, some leaving a setsid child
  that sleeps on, some ignoring SIGTERM; now and then an elastic job (1 to 2-4 GPUs,
  examples/elastic_train.py on gloo, 40 short steps). New jobs wait while the queue is
  long, so the cluster stays busy without the queue growing for ever;
- cancellations of random live jobs;
- one fault every `--fault-every` seconds (at random in the range), one at a time: an agent
  SIGKILLed and restarted before or after the node timeout, an agent frozen (SIGSTOP) for
  less or more than the node timeout, an agent SIGTERMed and restarted, the daemon
  SIGKILLed and restarted on the same SQLite file.

A sampler thread reads, every `--sample-every` seconds, ListNodes and then every job
process of the machine (/proc/<pid>/environ: SCHEDULERD_JOB_ID, _ATTEMPT, _NODE,
CUDA_VISIBLE_DEVICES; zombies skipped) and its cgroup. Violations (bench/_soak_checks.py):

- two (job, attempt) with live processes on one (node, GPU) at once;
- the daemon showing a GPU held by a job while a process of another job runs on it;
- a job process in a cgroup of another job, or outside its node's cgroups (escaped);
- after the run (store read only with sqlite3): an acknowledged job missing, or not ended
  (after the last fault injection stops, the cluster settles for a bounded time and what is
  left is cancelled); a job without exactly one terminal event, or whose state does not
  match it; a job FAILED for a reason that is not its own ("lost", "node", "agent");
- the daemon or an agent exiting when the soak did not kill it; job processes or cgroups
  left after the agents' orderly shutdown; new untracked files in the repository (other than
  source files, which someone else may be writing meanwhile: those are only listed).

It prints a Markdown table and exits 1 if any violation. Everything lives in a temporary
folder (kept, with the logs and soak-events.log, when something was found, or with --keep);
every process it started, and whatever those started, carries a marker in its environment
and is killed at the end, also on Ctrl-C, SIGTERM or an error, and the agents' cgroups are
removed.

    .venv/bin/python bench/soak.py --minutes 3            # a short run
    nohup .venv/bin/python bench/soak.py > /tmp/soak.out 2>&1 &  # 30 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc
from _cluster import REPO, free_port
from _soak_checks import (
    NOT_OWN_FAULT,
    TERMINAL,
    Sampler,
    StoreReport,
    Violation,
    kill_tagged,
    leftover_cgroups,
    port_listened,
    read_store,
    remove_agent_cgroups,
    scan,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from schedulerd.api.v1 import admin_pb2, jobs_pb2
from schedulerd.client import Client

TAG_VAR = "SCHEDULERD_SOAK_TAG"
TAG = uuid.uuid4().hex
ELASTIC = REPO / "examples" / "elastic_train.py"
ERROR_LINE = re.compile(r"Error\b|error:|EADDRINUSE|timed out|terminate called")
SOURCES = (".py", ".md", ".proto", ".yaml", ".toml", ".sh", ".txt", ".pyi")
ELASTIC_PORT = 29400  # the first store port the daemon hands out (daemon/plans.py)
POLICY = """version: 1
consumers:
  a: {share: 1, grace: 2s}
  b: {share: 1, grace: 2s}
"""
LIVE = [jobs_pb2.PENDING, jobs_pb2.RUNNING, jobs_pb2.PREEMPTED]
QUEUED = (jobs_pb2.PENDING, jobs_pb2.PREEMPTED)
# What each kind of job should end as when nobody cancels it.
EXPECTED = {
    "sleep": "SUCCEEDED",
    "exit3": "FAILED",
    "setsid": "SUCCEEDED",
    "noterm": "SUCCEEDED",
    "elastic": "SUCCEEDED",
}


class SoakError(RuntimeError):
    pass


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


# --- the cluster ---------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes] | None = None
    expected_down: bool = False  # the soak stopped or killed it (and will restart it)
    frozen: bool = False
    starts: int = 0


class Cluster:
    """The daemon and the agents, with restarts, a watchdog's view of unexpected exits,
    and a log of every injection."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.args = args
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.db = root / "schedulerd.db"
        (root / "policy.yaml").write_text(POLICY)
        self.daemon = Proc("daemon")
        self.nodes = [f"soak-{os.getpid()}-{i}" for i in range(1, args.nodes + 1)]
        self.agents = {n: Proc(n) for n in self.nodes}
        self.lock = threading.RLock()
        self.crashes: list[Violation] = []
        self.kind = "pgroup"  # the agents' containment, read from their log
        self._clients: list[Client] = []
        self.client = self._new_client(10.0)
        self.probe_client = self._new_client(0.5)
        self.events = open(root / "soak-events.log", "a", buffering=1)  # noqa: SIM115
        self.closed = False

    def _new_client(self, timeout_s: float) -> Client:
        c = Client(self.address, timeout_s=timeout_s)
        self._clients.append(c)
        return c

    def log(self, text: str) -> None:
        self.events.write(f"{stamp(time.time())} {text}\n")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
        env.update({TAG_VAR: TAG, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        return env

    # -- the daemon

    def start_daemon(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "schedulerd.daemon",
            "--listen",
            self.address,
            "--db",
            str(self.db),
            "--policy",
            str(self.root / "policy.yaml"),
            "--tick",
            str(self.args.tick),
            "--heartbeat",
            str(self.args.heartbeat),
            "--node-timeout",
            str(self.args.node_timeout),
            "--log-level",
            self.args.log_level,
        ]
        with self.lock:
            if self.closed:
                raise SoakError("the cluster is closed")
            popen = self.daemon.popen
            if popen is None or popen.poll() is not None:  # not restarted by another thread
                log = open(self.root / "daemon.log", "ab")  # noqa: SIM115
                popen = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=self.env()
                )
                log.close()
                self.daemon.popen = popen
                self.daemon.starts += 1
                self.log(f"daemon started, pid {popen.pid}")
                # Fresh channels: an old one may be deep in its reconnect backoff.
                self.client = self._new_client(10.0)
                self.probe_client = self._new_client(0.5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise SoakError(f"the daemon exited at start: see {self.root / 'daemon.log'}")
            try:
                with grpc.insecure_channel(self.address) as ch:
                    resp = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    with self.lock:
                        self.daemon.expected_down = False
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise SoakError("the daemon did not serve within 60 s")

    def kill_daemon(self) -> None:
        with self.lock:
            self.daemon.expected_down = True
            assert self.daemon.popen is not None
            self.daemon.popen.send_signal(signal.SIGKILL)
            self.log(f"daemon SIGKILL, pid {self.daemon.popen.pid}")
        self.daemon.popen.wait(10)

    def daemon_up(self) -> bool:
        p = self.daemon.popen
        return p is not None and p.poll() is None and not self.daemon.expected_down

    # -- agents

    def start_agent(self, node: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "agent",
            "--daemon",
            self.address,
            "--node",
            node,
            "--fake-gpus",
            str(self.args.gpus),
            "--state-dir",
            str(self.root / "agents"),
            "--containment",
            self.args.containment,
            "--shutdown-grace",
            "3",
            "--log-level",
            self.args.log_level,
        ]
        with self.lock:
            if self.closed:
                raise SoakError("the cluster is closed")
            a = self.agents[node]
            if a.popen is not None and a.popen.poll() is None:
                return  # restarted by another thread
            log = open(self.root / f"agent-{node}.log", "ab")  # noqa: SIM115
            a.popen = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=self.env()
            )
            log.close()
            a.starts += 1
            a.expected_down = False
            a.frozen = False
            self.log(f"agent {node} started, pid {a.popen.pid}")

    def signal_agent(self, node: str, sig: signal.Signals) -> subprocess.Popen[bytes]:
        with self.lock:
            a = self.agents[node]
            assert a.popen is not None
            if sig in (signal.SIGKILL, signal.SIGTERM):
                a.expected_down = True
            if sig == signal.SIGSTOP:
                a.frozen = True
            a.popen.send_signal(sig)
            if sig == signal.SIGCONT:
                a.frozen = False
            self.log(f"agent {node} {sig.name}, pid {a.popen.pid}")
            return a.popen

    def read_containment(self) -> str:
        pattern = re.compile(r"containment: (cgroup2|cgroup1),")
        kinds = set()
        for node in self.nodes:
            text = (self.root / f"agent-{node}.log").read_text(errors="replace")
            m = pattern.search(text)
            kinds.add(m[1] if m else "pgroup")
        if len(kinds) != 1:
            raise SoakError(f"agents chose different containments: {kinds}")
        return kinds.pop()

    def nodes_up(self) -> int:
        try:
            return sum(1 for n in self.client.nodes() if n.state == admin_pb2.UP)
        except Exception:
            return 0

    def wait_nodes_up(self, count: int, timeout_s: float = 60) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.nodes_up() >= count:
                return True
            time.sleep(0.2)
        return False

    # -- the watchdog

    def check_exits(self) -> None:
        """A process that exited while the soak did not stop it: recorded and restarted."""
        with self.lock:
            todo = []
            for p in (self.daemon, *self.agents.values()):
                if p.popen is None or p.expected_down:
                    continue
                rc = p.popen.poll()
                if rc is None:
                    continue
                text = f"{p.name} (pid {p.popen.pid}) exited on its own with {rc}"
                what = "daemon" if p is self.daemon else "an agent"
                self.crashes.append(Violation(f"{what} exited on its own", time.time(), text))
                self.log(f"!!! {text}")
                p.expected_down = True
                todo.append(p)
        for p in todo:
            if p is self.daemon:
                self.start_daemon()
            else:
                self.start_agent(p.name)

    def view(self) -> dict[tuple[str, int], int] | None:
        """ListNodes as {(node, GPU): job id}; None when the daemon does not answer."""
        if not self.daemon_up():
            return None
        try:
            nodes = self.probe_client.nodes()
        except Exception:
            return None
        return {(n.name, g.index): g.job_id for n in nodes for g in n.gpus if g.job_id}

    def stop(self) -> dict[str, int | None]:
        """An orderly stop: SIGCONT, SIGTERM to the agents, then to the daemon."""
        rcs: dict[str, int | None] = {}
        with self.lock:
            for p in (*self.agents.values(), self.daemon):
                p.expected_down = True
        for p in self.agents.values():
            if p.popen is not None and p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.send_signal(signal.SIGCONT)
                    p.popen.send_signal(signal.SIGTERM)
        for p in [*self.agents.values(), self.daemon]:
            if p is self.daemon and p.popen is not None and p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
            if p.popen is None:
                continue
            try:
                rcs[p.name] = p.popen.wait(30)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(5)
                rcs[p.name] = None
        return rcs

    def kill_all(self) -> None:
        with self.lock:
            self.closed = True
            for p in (*self.agents.values(), self.daemon):
                p.expected_down = True
                if p.popen is not None and p.popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.popen.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.popen.wait(5)
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        self.events.close()


# --- the injectors ---------------------------------------------------------------------------


@dataclass
class Submitted:
    kind: str
    gpus: int
    gpus_max: int
    at: float


@dataclass
class Tally:
    submitted: dict[int, Submitted] = field(default_factory=dict)
    submit_errors: Counter[str] = field(default_factory=Counter)
    cancels: int = 0
    cancel_errors: int = 0
    elastic_skipped: int = 0
    fault_log: list[tuple[float, str]] = field(default_factory=list)  # (start, what)
    faults: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def job_command(kind: str, rng: random.Random) -> list[str]:
    t = rng.choice([rng.uniform(1, 8)] * 14 + [rng.uniform(8, 20)] * 5 + [rng.uniform(20, 40)] * 1)
    t = round(t, 2)
    py = sys.executable
    if kind == "sleep":
        code = f"import time; time.sleep({t})"
    elif kind == "exit3":
        code = f"import sys, time; time.sleep({t}); sys.exit(3)"
    elif kind == "setsid":
        code = (
            "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(300)'], start_new_session=True, "
            f"stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL); time.sleep({t})"
        )
    elif kind == "noterm":
        code = (
            f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep({t})"
        )
    else:
        return [py, str(ELASTIC), "--steps", "40", "--step-time", "0.05"]
    return [py, "-c", code]


def live_jobs(cluster: Cluster) -> list[jobs_pb2.Job]:
    return cluster.client.list_jobs(states=[jobs_pb2.JobState.Name(s) for s in LIVE])


class Injector(threading.Thread):
    def __init__(self, name: str, body: Callable[[], None], halt: threading.Event) -> None:
        super().__init__(daemon=True, name=name)
        self.body = body
        self.halt = halt
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.body()
        except BaseException as e:
            self.error = e
            traceback.print_exc()
            self.halt.set()


def submitter(
    cluster: Cluster, tally: Tally, args: argparse.Namespace, halt: threading.Event
) -> None:
    rng = random.Random(args.seed * 3 + 1)
    kinds = ["sleep"] * 10 + ["exit3"] * 3 + ["setsid"] * 3 + ["noterm"] * 3
    sizes = [1] * 8 + [2] * 6 + [3] * 2 + [4] * 3 + [6] * 2 + [8] * 1
    while not halt.wait(rng.expovariate(1 / args.submit_every)):
        kind = ""
        try:
            live = live_jobs(cluster)
        except Exception as e:
            tally.submit_errors[type(e).__name__] += 1
            continue
        if sum(1 for j in live if j.state in QUEUED) >= args.max_queue:
            continue
        elastic_live = sum(1 for j in live if j.spec.gpus.max != j.spec.gpus.min)
        if elastic_live < 1 and rng.random() < args.elastic_share:
            kind, gpus, gpus_max = "elastic", 1, rng.randint(2, 4)
        if kind == "elastic" and port_listened(ELASTIC_PORT):
            # Another program (another daemon's elastic job, a torchrun) holds the port our
            # daemon would give this job's store: its workers would fail or join the other.
            tally.elastic_skipped += 1
            kind = ""
        if not kind:
            kind, gpus = rng.choice(kinds), rng.choice(sizes)
            gpus_max = gpus
        consumer = rng.choice(["/a", "/b"])
        cmd = job_command(kind, rng)
        env = {"GLOO_SOCKET_IFNAME": "lo"} if kind == "elastic" else {}
        try:
            job = cluster.client.submit(
                consumer,
                cmd,
                gpus=gpus,
                gpus_max=gpus_max if gpus_max != gpus else None,
                name=f"soak-{kind}",
                env=env,
            )
        except Exception as e:
            code = getattr(e, "code", None)
            tally.submit_errors[code.name if code is not None else type(e).__name__] += 1
            continue
        with tally.lock:
            tally.submitted[job.id] = Submitted(kind, gpus, gpus_max, time.time())
        cluster.log(f"submit job {job.id}: {kind} {gpus}:{gpus_max} {consumer}")


def canceller(
    cluster: Cluster, tally: Tally, args: argparse.Namespace, halt: threading.Event
) -> None:
    rng = random.Random(args.seed * 3 + 2)
    while not halt.wait(rng.expovariate(1 / args.cancel_every)):
        try:
            ours = [j for j in live_jobs(cluster) if j.id in tally.submitted]
            if not ours:
                continue
            job = rng.choice(ours)
            cluster.client.cancel(job.id)
        except Exception:
            tally.cancel_errors += 1
            continue
        tally.cancels += 1
        cluster.log(f"cancel job {job.id} (was {jobs_pb2.JobState.Name(job.state)})")


FAULTS = {
    "agent SIGKILL, back before the node timeout": 5,
    "agent SIGKILL, back after the node timeout": 3,
    "agent SIGSTOP, shorter than the node timeout": 4,
    "agent SIGSTOP, longer than the node timeout": 2,
    "agent SIGTERM and restart": 2,
    "daemon SIGKILL and restart": 4,
}


def faulter(
    cluster: Cluster, tally: Tally, args: argparse.Namespace, halt: threading.Event
) -> None:
    rng = random.Random(args.seed * 3 + 3)
    lo, hi = args.fault_every
    timeout = args.node_timeout
    names, weights = list(FAULTS), list(FAULTS.values())
    while not halt.wait(rng.uniform(lo, hi)):
        fault = rng.choices(names, weights)[0]
        node = rng.choice(cluster.nodes)
        tally.faults[fault] += 1
        tally.fault_log.append((time.time(), f"{fault} ({node})"))
        if fault.startswith("agent SIGKILL"):
            proc = cluster.signal_agent(node, signal.SIGKILL)
            proc.wait(10)
            before = fault.endswith("before the node timeout")
            down = rng.uniform(0.5, timeout - 3) if before else timeout + rng.uniform(1, 6)
            time.sleep(down)
            cluster.start_agent(node)
        elif fault.startswith("agent SIGSTOP"):
            cluster.signal_agent(node, signal.SIGSTOP)
            shorter = fault.endswith("shorter than the node timeout")
            time.sleep(rng.uniform(1, timeout - 2) if shorter else timeout + rng.uniform(1, 6))
            cluster.signal_agent(node, signal.SIGCONT)
        elif fault.startswith("agent SIGTERM"):
            proc = cluster.signal_agent(node, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                cluster.log(f"!!! agent {node} still running 30 s after SIGTERM: SIGKILL")
                tally.faults["agent not stopped 30 s after SIGTERM"] += 1
                proc.kill()
                proc.wait(10)
            time.sleep(rng.uniform(0, 3))
            cluster.start_agent(node)
        else:
            cluster.kill_daemon()
            time.sleep(rng.uniform(0.5, 6))
            cluster.start_daemon()


# --- the run -----------------------------------------------------------------------------


def git_untracked() -> set[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return {line[3:] for line in out.splitlines() if line.startswith("??")}


@dataclass
class Outcome:
    violations: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, text: str | None = None) -> None:
        self.violations.setdefault(kind, [])
        if text is not None:
            self.violations[kind].append(text)


def settle(cluster: Cluster, tally: Tally, args: argparse.Namespace) -> tuple[float, int]:
    """Wait (bounded) for every job to end; then cancel what is left and wait again."""
    t0 = time.monotonic()
    cancelled = 0
    for phase, limit in (("settle", args.settle), ("cancel", 120.0)):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            cluster.check_exits()
            try:
                left = live_jobs(cluster)  # every job there is ours, acknowledged or not
            except Exception:
                time.sleep(1)
                continue
            if not left:
                return time.monotonic() - t0, cancelled
            if phase == "cancel":
                for j in left:
                    if not j.cancel_requested:
                        with contextlib.suppress(Exception):
                            cluster.client.cancel(j.id)
                            cancelled += 1
                            cluster.log(f"settle: cancel job {j.id}")
            time.sleep(1)
    return time.monotonic() - t0, cancelled


def run(args: argparse.Namespace, root: Path, outcome: Outcome) -> dict[str, object]:
    untracked_before = git_untracked()
    cluster = Cluster(root, args)
    tally = Tally()
    halt = threading.Event()
    sampler: Sampler | None = None
    facts: dict[str, object] = {"root": root}
    try:
        cluster.start_daemon()
        for node in cluster.nodes:
            cluster.start_agent(node)
        if not cluster.wait_nodes_up(len(cluster.nodes)):
            raise SoakError("the agents did not all register")
        cluster.kind = cluster.read_containment()
        facts["containment"] = cluster.kind
        ours = set(cluster.nodes)
        sampler = Sampler(
            ours.__contains__, lambda: cluster.kind, cluster.view, every_s=args.sample_every
        )
        sampler.start()
        injectors = [
            Injector(name, lambda f=f: f(cluster, tally, args, halt), halt)  # type: ignore[misc]
            for name, f in (("submit", submitter), ("cancel", canceller), ("fault", faulter))
        ]
        t_start = time.monotonic()
        cluster.log(f"soak starts: {vars(args)}")
        for t in injectors:
            t.start()
        end = t_start + args.minutes * 60
        last_report = t_start
        while not halt.is_set() and time.monotonic() < end:
            time.sleep(0.5)
            cluster.check_exits()
            if sampler.error is not None:
                raise SoakError(f"the sampler failed: {sampler.error!r}")
            if time.monotonic() - last_report >= 60:
                last_report = time.monotonic()
                print(
                    f"[{stamp(time.time())}] {(last_report - t_start) / 60:.1f} min: "
                    f"{len(tally.submitted)} jobs, {sum(tally.faults.values())} faults, "
                    f"{sampler.samples} samples, "
                    f"{sum(sampler.counts.values()) + len(cluster.crashes)} violations",
                    flush=True,
                )
        halt.set()
        cluster.log("injections stop; the last fault finishes")
        for t in injectors:
            while t.is_alive():
                t.join(1)
                cluster.check_exits()
        errors = [t for t in injectors if t.error is not None]
        if errors:
            raise SoakError(f"the {errors[0].name} thread failed: {errors[0].error!r}")
        facts["soak_s"] = time.monotonic() - t_start
        # Everything back up before settling: the last fault ended with a restart.
        if not cluster.wait_nodes_up(len(cluster.nodes), 60):
            outcome.notes.append("not every node was UP 60 s after the last fault")
        settle_s, settle_cancels = settle(cluster, tally, args)
        facts["settle_s"], facts["settle_cancels"] = settle_s, settle_cancels
        cluster.log(f"settled in {settle_s:.1f} s, {settle_cancels} cancelled at the end")
        time.sleep(2)  # a few more samples of an idle cluster
        sampler.stop()
        sampler.write_timeline(root / "processes.jsonl")
        if sampler.error is not None:
            raise SoakError(f"the sampler failed: {sampler.error!r}")
        cluster.check_exits()
        # An orderly stop: the agents must leave no job process and no cgroup behind.
        rcs = cluster.stop()
        facts["stop_rcs"] = rcs
        outcome.add("left after the agents stopped")
        left = scan(ours.__contains__, cluster.kind)
        for p in left.values():
            outcome.add(
                "left after the agents stopped",
                f"pid {p.pid} of {p.node} job {p.holder[0]} attempt {p.holder[1]}",
            )
        time.sleep(0.5)
        for d in leftover_cgroups(cluster.nodes):
            outcome.add("left after the agents stopped", f"cgroup {d}")
        if rcs.get("daemon") != 0:
            outcome.notes.append(f"the daemon's exit code after SIGTERM: {rcs.get('daemon')}")
        bad_agents = {n: rc for n, rc in rcs.items() if n != "daemon" and rc != 0}
        if bad_agents:
            outcome.notes.append(f"agents' exit codes after SIGTERM: {bad_agents}")
        store = read_store(cluster.db)
        check_store(root, store, tally, outcome, facts)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second Ctrl-C must not stop the cleanup
            signal.signal(sig, signal.SIG_IGN)
        halt.set()
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        cluster.kill_all()
        facts["killed_at_end"] = kill_tagged(TAG_VAR, TAG)
        for node in cluster.nodes:
            remove_agent_cgroups(node)
    for kind in ("daemon exited on its own", "an agent exited on its own"):
        outcome.add(kind)
    for v in cluster.crashes:
        outcome.add(v.kind, f"{stamp(v.at)} {v.text}")
    assert sampler is not None
    for kind in Sampler.KINDS:
        outcome.add(kind)
    for v in sampler.violations:
        outcome.add(v.kind, f"{stamp(v.at)} {v.text}")
    new_files = sorted(git_untracked() - untracked_before)
    # Other people may be writing new source files in this checkout meanwhile: those are
    # listed, not counted; anything else new (a log, a database, a trace) is the soak's.
    stray = "new untracked files in the repository (not sources)"
    outcome.add(stray)
    for f in new_files:
        if f.endswith(SOURCES):
            outcome.notes.append(f"new untracked source file (someone else's?): {f}")
        else:
            outcome.add(stray, f)
    facts.update(
        tally=tally,
        samples=sampler.samples,
        view_samples=sampler.view_samples,
        unconfirmed=sampler.unconfirmed,
        max_procs=sampler.max_procs,
        twice={
            j: f"attempts {', '.join(sorted(a))} from {stamp(t0)} to {stamp(t1)}; "
            f"last fault before: {last_fault(tally, t0)}"
            for j, (a, t0, t1) in sorted(sampler.twice.items())
        },
        busy_gpus=sampler.busy_gpu_samples / max(1, sampler.samples),
        daemon_starts=cluster.daemon.starts,
    )
    return facts


def last_fault(tally: Tally, t: float) -> str:
    before = [(at, what) for at, what in tally.fault_log if at <= t]
    return f"{before[-1][1]} at {stamp(before[-1][0])}" if before else "none"


def last_error(root: Path, job_id: int) -> str:
    """The job's last error line in its logs, all nodes and attempts (why it failed)."""
    found = ""
    for log in sorted((root / "agents").glob(f"*/logs/job-{job_id}.log")):
        for line in log.read_text(errors="replace").splitlines():
            if ERROR_LINE.search(line):
                found = f"; {log.parent.parent.name}: {line.strip()[:300]}"
    return found


def check_store(
    root: Path, store: StoreReport, tally: Tally, outcome: Outcome, facts: dict[str, object]
) -> None:
    for kind in (
        "acknowledged job missing from the store",
        "job not ended at the end",
        "not exactly one terminal event",
        "final state does not match its terminal event",
        "FAILED for a reason not its own",
    ):
        outcome.add(kind)
    states: Counter[str] = Counter()
    unexpected = []
    for job_id in sorted(set(tally.submitted) | set(store.jobs)):
        row = store.jobs.get(job_id)
        if row is None:
            kind = tally.submitted[job_id].kind
            outcome.add("acknowledged job missing from the store", f"job {job_id} ({kind})")
            continue
        kind = str(row["name"]).removeprefix("soak-")  # also for a job never acknowledged
        state = str(row["state"])
        states[state] += 1
        if state in ("PENDING", "RUNNING", "PREEMPTED"):
            outcome.add("job not ended at the end", f"job {job_id}: {state}, {row['reason']}")
        terminal = store.terminal.get(job_id, [])
        if len(terminal) != 1:
            outcome.add(
                "not exactly one terminal event", f"job {job_id}: {terminal or 'none'} ({state})"
            )
        elif terminal[0] != state.lower():
            outcome.add(
                "final state does not match its terminal event",
                f"job {job_id}: state {state}, event {terminal[0]}",
            )
        reason = str(row["reason"])
        if state == "FAILED" and NOT_OWN_FAULT.search(reason):
            outcome.add(
                "FAILED for a reason not its own",
                f"job {job_id} ({kind}, attempt {row['attempt']}): {reason}",
            )
        elif state in ("SUCCEEDED", "FAILED") and state != EXPECTED.get(kind):
            unexpected.append(
                f"job {job_id} ({kind}, attempt {row['attempt']}): {state} "
                f"exit {row['exit_code']}: {reason}{last_error(root, job_id)}"
            )
    others = sorted(set(store.jobs) - set(tally.submitted))
    facts.update(
        states=states,
        unexpected=unexpected,
        unacknowledged=others,
        requeue_events=Counter(k for ks in store.requeues.values() for k in ks),
        requeued_jobs=sum(1 for j in store.jobs if store.requeues.get(j)),
        terminal_kinds=TERMINAL,
    )


# --- the report ------------------------------------------------------------------------------


def report(args: argparse.Namespace, facts: dict[str, object], outcome: Outcome) -> str:
    tally = facts["tally"]
    assert isinstance(tally, Tally)
    states = facts.get("states", Counter())
    assert isinstance(states, Counter)
    kinds = Counter(s.kind for s in tally.submitted.values())
    multi = sum(1 for s in tally.submitted.values() if s.gpus > args.gpus)
    unexpected = facts.get("unexpected", [])
    assert isinstance(unexpected, list)
    requeue_events = facts.get("requeue_events", Counter())
    assert isinstance(requeue_events, Counter)
    twice = facts.get("twice", {})
    assert isinstance(twice, dict)
    failed_own = states["FAILED"] - len(
        outcome.violations.get("FAILED for a reason not its own", [])
    )
    rows: list[tuple[str, object]] = [
        ("minutes of injection", f"{float(str(facts.get('soak_s', 0))) / 60:.1f}"),
        ("seed", args.seed),
        ("nodes × fake GPUs", f"{args.nodes} × {args.gpus}"),
        ("containment", facts.get("containment", "?")),
        (
            "daemon tick / heartbeat / node timeout (s)",
            f"{args.tick} / {args.heartbeat} / {args.node_timeout}",
        ),
        ("one fault every (s)", f"{args.fault_every[0]:g}–{args.fault_every[1]:g}"),
        ("submit every (s, mean) / queue cap", f"{args.submit_every:g} / {args.max_queue}"),
        ("sample every (s)", args.sample_every),
    ]
    rows += [(f"fault: {k}", tally.faults[k]) for k in FAULTS]
    rows += [(f"fault: {k}", v) for k, v in tally.faults.items() if k not in FAULTS]
    rows += [
        ("cancels (random, acknowledged)", tally.cancels),
        ("cancels at the end (after settling)", facts.get("settle_cancels", 0)),
        ("daemon starts", facts.get("daemon_starts", 0)),
        ("jobs submitted (acknowledged)", len(tally.submitted)),
        (
            "… by kind",
            ", ".join(f"{k} {kinds[k]}" for k in EXPECTED),
        ),
        (f"… multi-node (more than {args.gpus} GPUs)", multi),
        ("submits refused or failed (daemon down)", sum(tally.submit_errors.values())),
        (
            f"elastic submits skipped (port {ELASTIC_PORT} held by another program)",
            tally.elastic_skipped,
        ),
        ("jobs in the store never acknowledged", len(facts.get("unacknowledged", []))),  # type: ignore[arg-type]
        ("jobs succeeded", states["SUCCEEDED"]),
        ("jobs failed (their own exit code)", failed_own),
        ("… of which not the kind's expected outcome", len(unexpected)),
        ("jobs cancelled", states["CANCELLED"]),
        ("jobs requeued at least once", facts.get("requeued_jobs", 0)),
        (
            "requeues by cause",
            ", ".join(f"{k} {v}" for k, v in sorted(requeue_events.items())) or "0",
        ),
        ("jobs seen running as two attempts at once (allowed)", len(twice)),
        ("settle time at the end (s)", f"{float(str(facts.get('settle_s', 0))):.0f}"),
        ("samples (with the daemon's view)", f"{facts['samples']} ({facts['view_samples']})"),
        ("most job processes at once", facts["max_procs"]),
        (
            f"GPUs with a live job process, mean of the samples (of {args.nodes * args.gpus})",
            f"{float(str(facts['busy_gpus'])):.1f}",
        ),
        ("conflicts not confirmed by a second read", facts["unconfirmed"]),
    ]
    rows += [(f"**violation**: {k}", len(v)) for k, v in outcome.violations.items()]
    lines = ["| | |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=30.0, help="how long faults are injected")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpus", type=int, default=4, help="fake GPUs per node")
    p.add_argument("--tick", type=float, default=0.2)
    p.add_argument("--heartbeat", type=float, default=0.5)
    p.add_argument("--node-timeout", type=float, default=8.0)
    p.add_argument(
        "--fault-every",
        type=lambda s: tuple(float(x) for x in s.split(":")),
        default=(10.0, 20.0),
        help="seconds between the end of a fault and the next one: LO:HI (default 10:20)",
    )
    p.add_argument("--submit-every", type=float, default=1.0, help="mean seconds between submits")
    p.add_argument("--max-queue", type=int, default=10, help="no submit while this many wait")
    p.add_argument("--cancel-every", type=float, default=8.0, help="mean seconds between cancels")
    p.add_argument("--elastic-share", type=float, default=0.05, help="of the submissions")
    p.add_argument("--sample-every", type=float, default=0.075)
    p.add_argument("--settle", type=float, default=90.0, help="seconds for jobs to end at the end")
    p.add_argument(
        "--containment", default="auto", choices=["auto", "cgroup2", "cgroup1", "pgroup"]
    )
    p.add_argument("--log-level", default="DEBUG", choices=["DEBUG", "INFO"])
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args()
    if args.node_timeout < 5:
        p.error("--node-timeout must be at least 5 s")
    return args


def main() -> int:
    args = parse_args()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Also SIGINT: a shell starts a background job with SIGINT ignored, and Python then
    # leaves it so; a soak started with nohup ... & must still stop cleanly on kill -INT.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_term)
    root = Path(tempfile.mkdtemp(prefix="schedulerd-soak-"))
    print(f"soak: {args.minutes:g} min, folder {root}", flush=True)
    outcome = Outcome()
    started = datetime.now()
    failed = True
    try:
        facts = run(args, root, outcome)
        failed = False
    except KeyboardInterrupt:
        print("interrupted: everything was stopped and cleaned up", file=sys.stderr)
        return 130
    except SoakError as e:
        print(f"soak failed: {e}", file=sys.stderr)
        return 2
    finally:
        if failed or args.keep:
            print(f"kept {root}", file=sys.stderr)
    found = {k: v for k, v in outcome.violations.items() if v}
    print()
    print(
        f"Soak of {started:%Y-%m-%d %H:%M}, {platform.node()} ({os.cpu_count()} cores), "
        f"Python {platform.python_version()}: `{' '.join(sys.argv)}`"
    )
    print()
    print(report(args, facts, outcome))
    print()
    for kind, texts in found.items():
        print(f"{kind}:")
        for text in texts[:20]:
            print(f"  {text}")
        if len(texts) > 20:
            print(f"  ... and {len(texts) - 20} more")
    unexpected = facts.get("unexpected", [])
    if unexpected:
        print("jobs whose outcome is not their kind's (not counted as violations):")
        for text in unexpected[:20]:  # type: ignore[index]
            print(f"  {text}")
    twice = facts.get("twice", {})
    if twice:
        print("jobs seen running as two attempts at once (allowed: see docs/fencing.md):")
        for job, text in twice.items():  # type: ignore[attr-defined]
            print(f"  job {job}: {text}")
    for note in outcome.notes:
        print(f"note: {note}")
    if found or unexpected or args.keep:
        print(f"logs kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
