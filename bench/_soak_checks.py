"""The checks of bench/soak.py: what the machine's processes and cgroups say (a sampler
thread), and what the daemon's SQLite file says at the end.

Processes, not the daemon's records: every live process whose environment names a job
(`SCHEDULERD_JOB_ID`, `SCHEDULERD_ATTEMPT`, `SCHEDULERD_NODE`, `CUDA_VISIBLE_DEVICES`,
set by the agent at exec, so inherited by whatever the job forks, setsid or not) holds
the GPUs of its `CUDA_VISIBLE_DEVICES` on its node.

A scan of /proc is not atomic: process A may be read, then die, and process B start and
be read later in the same scan. So a conflict is only counted once every process in it
has been read again after the scan, alive and the same process (same start time): each
was then alive from its first read to its second, and every first read comes before
every second one, so all were alive together at the last first read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.cgroups import bases_of, purge

Holder = tuple[int, int]  # (job id, attempt)
Gpu = tuple[str, int]  # (node, GPU index)

CGROUP_RE = re.compile(r"/schedulerd-(?P<node>[^/]+)/job-(?P<job>\d+)\.(?P<attempt>\d+)(?:/|$)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TERMINAL = ("succeeded", "failed", "cancelled")
REQUEUE_KINDS = ("lost", "refused", "node-stopped", "preempted")
NOT_OWN_FAULT = re.compile(r"lost|node|agent", re.IGNORECASE)


# --- processes and cgroups -----------------------------------------------------------------


@dataclass(frozen=True)
class JobProc:
    pid: int
    start: int  # /proc/<pid>/stat field 22: clock ticks after boot
    node: str
    holder: Holder
    gpus: tuple[int, ...]
    cgroup: str  # its path in the hierarchy the agents use ("" for process groups)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process, None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def _cgroup_line(text: str, kind: str) -> str:
    for line in text.splitlines():
        hid, controllers, path = line.split(":", 2)
        if kind == "cgroup2" and hid == "0" and not controllers:
            return path
        if kind == "cgroup1" and "freezer" in controllers.split(","):
            return path
    return ""


def read_proc(pid: int, nodes: Callable[[str], bool], kind: str) -> JobProc | None:
    """The job process `pid` if it is one of `nodes`' and alive (not a zombie)."""
    st = _stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return None
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    if b"SCHEDULERD_JOB_ID=" not in raw:
        return None
    env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    if b"SCHEDULERD_JOB_ID" not in env:
        return None
    node = env.get(b"SCHEDULERD_NODE", b"").decode()
    if not nodes(node):
        return None
    cgroup = ""
    if kind in ("cgroup2", "cgroup1"):
        try:
            cgroup = _cgroup_line(Path(f"/proc/{pid}/cgroup").read_text(), kind)
        except OSError:
            return None
    gpus = env.get(b"CUDA_VISIBLE_DEVICES", b"")
    return JobProc(
        pid,
        st[1],
        node,
        (int(env[b"SCHEDULERD_JOB_ID"]), int(env.get(b"SCHEDULERD_ATTEMPT", b"0"))),
        tuple(int(g) for g in gpus.split(b",") if g.strip()),
        cgroup,
    )


def scan(nodes: Callable[[str], bool], kind: str) -> dict[int, JobProc]:
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            p = read_proc(int(entry.name), nodes, kind)
            if p is not None:
                found[p.pid] = p
    return found


def still_alive(p: JobProc, nodes: Callable[[str], bool], kind: str) -> bool:
    again = read_proc(p.pid, nodes, kind)
    return again is not None and again.start == p.start and again.holder == p.holder


def boottime_ticks() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME) * CLK_TCK


@dataclass
class Violation:
    kind: str
    at: float  # wall clock
    text: str


class Sampler(threading.Thread):
    """Samples every `every_s`: the daemon's view (ListNodes, when it answers), then every
    job process of our nodes. Records violations and a few observations."""

    KINDS = (
        "GPU held by two (job, attempt)",
        "daemon gave a GPU still in use",
        "process in another job's cgroup",
        "job process outside its node's cgroups",
    )

    def __init__(
        self,
        is_ours: Callable[[str], bool],
        kind: Callable[[], str],
        daemon_view: Callable[[], dict[Gpu, int] | None],
        every_s: float,
        escape_after_s: float = 1.5,
    ) -> None:
        super().__init__(daemon=True, name="sampler")
        self.is_ours = is_ours
        self.kind = kind  # the agents' containment: "cgroup2", "cgroup1" or "pgroup"
        self.daemon_view = daemon_view
        self.every_s = every_s
        self.escape_after_s = escape_after_s
        self.samples = 0
        self.view_samples = 0
        self.max_procs = 0
        self.unconfirmed = 0  # conflicts not confirmed by a second read (a scan's race)
        # job -> ("attempt on node" seen together, first and last time (wall clock))
        self.twice: dict[int, tuple[set[str], float, float]] = {}
        self.busy_gpu_samples = 0  # sum over samples of the GPUs with a live job process
        self.violations: list[Violation] = []
        self.counts: dict[str, int] = dict.fromkeys(self.KINDS, 0)
        self._seen: set[tuple[str, object]] = set()  # (kind, key) already recorded
        self._outside: dict[tuple[int, int], float] = {}  # (pid, start) -> first seen outside
        # Every job process seen: (pid, start) -> [node, job, attempt, GPUs, cgroup, first
        # and last seen (wall clock)], written out at the end for a post-mortem.
        self.timeline: dict[tuple[int, int], list[object]] = {}
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def _violate(self, kind: str, key: object, text: str) -> None:
        """One violation per (kind, key): a conflict that lasts is counted once."""
        if (kind, key) in self._seen:
            return
        self._seen.add((kind, key))
        self.counts[kind] += 1
        self.violations.append(Violation(kind, time.time(), text))

    def run(self) -> None:
        try:
            while not self._halt.wait(self.every_s):
                self.sample()
        except BaseException as e:  # reported by the soak, which then fails
            self.error = e

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def write_timeline(self, path: Path) -> None:
        with open(path, "w") as f:
            for (pid, _), (node, job, attempt, gpus, cgroup, first, last) in sorted(
                self.timeline.items(),
                key=lambda kv: kv[1][-2],  # type: ignore[arg-type,return-value]
            ):
                f.write(
                    json.dumps(
                        {
                            "pid": pid,
                            "node": node,
                            "job": job,
                            "attempt": attempt,
                            "gpus": gpus,
                            "cgroup": cgroup,
                            "first": first,
                            "last": last,
                        }
                    )
                    + "\n"
                )

    def sample(self) -> None:
        kind = self.kind()
        sent = boottime_ticks()
        view = self.daemon_view()
        procs = scan(self.is_ours, kind)
        self.samples += 1
        now = time.time()
        for p in procs.values():
            entry = self.timeline.get((p.pid, p.start))
            if entry is None:
                self.timeline[(p.pid, p.start)] = [
                    p.node,
                    *p.holder,
                    list(p.gpus),
                    p.cgroup,
                    now,
                    now,
                ]
            else:
                entry[-1] = now
        self.max_procs = max(self.max_procs, len(procs))
        self._check_gpus(procs, kind)
        if view is not None:
            self.view_samples += 1
            self._check_view(view, sent, procs, kind)
        if kind in ("cgroup2", "cgroup1"):
            self._check_cgroups(procs, kind)
        attempts: dict[int, set[str]] = defaultdict(set)
        for p in procs.values():
            attempts[p.holder[0]].add(f"{p.holder[1]} on {p.node}")
        for job, seen in attempts.items():
            if len({a.split()[0] for a in seen}) > 1:
                was = self.twice.get(job)
                if was is None:
                    self.twice[job] = (set(seen), now, now)
                else:
                    self.twice[job] = (was[0] | seen, was[1], now)

    def _check_gpus(self, procs: dict[int, JobProc], kind: str) -> None:
        by_gpu: dict[Gpu, dict[Holder, list[JobProc]]] = defaultdict(lambda: defaultdict(list))
        for p in procs.values():
            for g in p.gpus:
                by_gpu[(p.node, g)][p.holder].append(p)
        self.busy_gpu_samples += len(by_gpu)
        for gpu, holders in by_gpu.items():
            if len(holders) < 2:
                continue
            alive = {
                h: [p for p in ps if still_alive(p, self.is_ours, kind)]
                for h, ps in holders.items()
            }
            confirmed = sorted(h for h, ps in alive.items() if ps)
            if len(confirmed) < 2:
                self.unconfirmed += 1
                continue
            pids = {h: [p.pid for p in alive[h]] for h in confirmed}
            self._violate(
                self.KINDS[0],
                (gpu, tuple(confirmed)),
                f"{gpu[0]} GPU {gpu[1]} held by {confirmed} at once (pids {pids})",
            )

    def _check_view(
        self, view: dict[Gpu, int], sent: float, procs: dict[int, JobProc], kind: str
    ) -> None:
        """The daemon said GPU g is job B's; a process of another job that had started
        before the question and is alive after the answer ran there at that moment."""
        for p in procs.values():
            for g in p.gpus:
                shown = view.get((p.node, g), 0)
                if not shown or shown == p.holder[0]:
                    continue
                if p.start + 1 >= sent or not still_alive(p, self.is_ours, kind):
                    self.unconfirmed += 1
                    continue
                self._violate(
                    self.KINDS[1],
                    ((p.node, g), shown, p.holder),
                    f"{p.node} GPU {g} shown held by job {shown} while pid {p.pid} of "
                    f"job {p.holder[0]} attempt {p.holder[1]} runs there",
                )

    def _check_cgroups(self, procs: dict[int, JobProc], kind: str) -> None:
        now = time.monotonic()
        outside_now = set()
        for p in procs.values():
            m = CGROUP_RE.search(p.cgroup)
            if m is not None:
                where = (m["node"], int(m["job"]), int(m["attempt"]))
                if where != (p.node, *p.holder):
                    self._violate(
                        self.KINDS[2],
                        (p.pid, p.start),
                        f"pid {p.pid} of {p.node} job {p.holder[0]} attempt {p.holder[1]} "
                        f"is in cgroup {p.cgroup}",
                    )
                continue
            # Outside: a shim starts in the agent's cgroup and joins its worker's at once;
            # only a process still outside a while later has escaped.
            key = (p.pid, p.start)
            outside_now.add(key)
            first = self._outside.setdefault(key, now)
            if now - first >= self.escape_after_s and still_alive(p, self.is_ours, kind):
                self._violate(
                    self.KINDS[3],
                    key,
                    f"pid {p.pid} of {p.node} job {p.holder[0]} attempt {p.holder[1]} "
                    f"has been outside any job cgroup for {now - first:.1f} s "
                    f"(cgroup {p.cgroup or '?'})",
                )
        for key in set(self._outside) - outside_now:
            del self._outside[key]


# --- cleanup -----------------------------------------------------------------------------


def leftover_cgroups(nodes: Iterable[str]) -> list[Path]:
    """The cgroup bases of these nodes still on the machine (agent.cgroups finds them)."""
    return [Path(box.base) for node in nodes for box in bases_of(node)]


def remove_agent_cgroups(node: str) -> None:
    """Kill and remove what an agent of `node` left in its cgroups (a SIGKILLed agent)."""
    try:
        purge(node)
    except OSError as e:  # reported, not raised: the rest of the clean-up must go on
        print(f"soak: cannot remove the cgroups of {node}: {e}")


def port_listened(port: int) -> bool:
    """Whether any socket of this machine listens on TCP `port` (/proc/net/tcp, tcp6)."""
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def tagged_pids(var: str, tag: str) -> list[int]:
    """Every process carrying `var=tag` in its environment (all the soak started, and
    everything they started, setsid or not)."""
    marker = f"{var}={tag}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def kill_tagged(var: str, tag: str) -> int:
    killed = 0
    for _ in range(5):
        pids = [p for p in tagged_pids(var, tag) if (_stat(p) or ("Z",))[0] not in ("Z", "X")]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.2)
    return killed


# --- the store -----------------------------------------------------------------------------


@dataclass
class StoreReport:
    jobs: dict[int, dict[str, object]] = field(default_factory=dict)
    terminal: dict[int, list[str]] = field(default_factory=dict)
    requeues: dict[int, list[str]] = field(default_factory=dict)  # job -> requeue kinds


def read_store(db: Path) -> StoreReport:
    """The jobs and events tables, read only."""
    uri = f"file:{db}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=10)
        conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
    except sqlite3.Error:
        conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    conn.row_factory = sqlite3.Row
    out = StoreReport()
    try:
        for row in conn.execute(
            "SELECT id, state, exit_code, reason, attempt, consumer, gpus_min, gpus_max, name "
            "FROM jobs"
        ):
            out.jobs[row["id"]] = dict(row)
        for row in conn.execute("SELECT job_id, kind FROM events ORDER BY id"):
            if row["kind"] in TERMINAL:
                out.terminal.setdefault(row["job_id"], []).append(row["kind"])
            elif row["kind"] in REQUEUE_KINDS:
                out.requeues.setdefault(row["job_id"], []).append(row["kind"])
    finally:
        conn.close()
    return out
