"""Elastic resize, in place (schedulerd.elastic) vs torchrun's elastic restart.

Both run the same training script, examples/elastic_train.py (a small MLP on synthetic data,
gloo on the CPU, loopback), grow it from 2 to 3 workers and shrink it back to 2, and read
what happened from the script's JSON-lines trace (one line per step and worker):

- **in place**: 2 workers started as the agent starts them (the environment of
  docs/elastic.md, a free port for the store); grow = start a joiner (SCHEDULERD_ELASTIC_JOIN=1),
  shrink = SIGUSR1 to that worker. Nobody is restarted.
- **torchrun**: `python -m torch.distributed.run --nnodes=1:2 --rdzv-backend=c10d ...`, node A
  with 2 workers; grow = start node B (a second agent, 1 worker) that joins the rendezvous;
  shrink = SIGTERM to agent B. torchrun stops every worker and starts new ones, which resume
  from the last checkpoint (--checkpoint-every N), so the steps since it are done again.

For each event: the pause (the time between the last step completed before the event and the
first step completed after it, minus one ordinary step interval: the time lost), the step
boundary that did the resize (`sync_ms` of that step, in place only), steps lost (steps done
again: the last step before minus the step the job resumed from) and workers restarted
(processes started after the event other than the ones added).

    .venv/bin/python bench/resize.py            # 3 runs of each (about 4 min on 2 cores)
    .venv/bin/python bench/resize.py --quick    # 1 run of each

A script that prints a table, never a test. Every process it starts carries a marker in its
environment; all of them are killed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "elastic_train.py"
TAG_VAR = "SCHEDULERD_BENCH_RESIZE"  # marks every process this script starts
TAG = uuid.uuid4().hex

Record = dict[str, Any]
IN_PLACE = "schedulerd.elastic in place"
TORCHRUN = "torchrun restart"


class BenchError(RuntimeError):
    pass


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            TAG_VAR: TAG,
            "CUDA_VISIBLE_DEVICES": "",  # gloo on the CPU, whatever this machine has
            "OMP_NUM_THREADS": "1",  # several workers share the cores
            "GLOO_SOCKET_IFNAME": "lo",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
    )
    for var in [v for v in env if v.startswith(("SCHEDULERD_ELASTIC", "TORCHELASTIC_"))]:
        del env[var]
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")


@dataclass
class Run:
    """One scenario run: its directory, its processes and its trace."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    _records: list[Record] = field(default_factory=list)
    _offset: int = 0

    @property
    def trace_path(self) -> Path:
        return self.workdir / "trace.jsonl"

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        log_path = self.workdir / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 (closed in close())
        popen = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,  # its own process group, as the agent does
        )
        proc = Proc(name, popen, log_path, log)
        self.procs.append(proc)
        return proc

    def trace(self) -> list[Record]:
        """The trace so far, read incrementally (polled while the workers use the cores)."""
        if self.trace_path.exists():
            with open(self.trace_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line being written waits for the next read
            self._offset += end
            for line in data[:end].splitlines():
                if line.strip():
                    self._records.append(json.loads(line))
        return list(self._records)

    def wait_for(self, what: str, probe: Callable[[list[Record]], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if probe(self.trace()):
                return
            for p in self.procs:
                code = p.popen.poll()
                if code not in (None, 0) and p.name.startswith(("worker", "agent-A")):
                    raise BenchError(f"{p.name} exited {code} waiting for {what}:\n{self.logs()}")
            time.sleep(0.1)
        raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}:\n{self.logs()}")

    def wait_exit(self, proc: Proc, timeout_s: float) -> int | None:
        try:
            return proc.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def logs(self, tail: int = 25) -> str:
        out = []
        for p in self.procs:
            lines = p.output().splitlines()[-tail:]
            out.append(f"--- {p.name} (pid {p.pid}) ---\n" + "\n".join(lines))
        return "\n".join(out)

    def close(self) -> None:
        kill_tagged()
        for p in self.procs:
            if p.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(5)
            p.log.close()


def tagged_pids() -> list[int]:
    """Our processes, wherever they are now: torchrun starts its workers in sessions of their
    own, and a worker may outlive its agent; each carries TAG in its environment."""
    marker = f"{TAG_VAR}={TAG}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def kill_tagged() -> None:
    for _ in range(3):
        pids = tagged_pids()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


@contextlib.contextmanager
def run_dir(root: Path, name: str) -> Iterator[Run]:
    workdir = root / name
    workdir.mkdir(parents=True)
    run = Run(workdir)
    try:
        yield run
    finally:
        run.close()


# --- reading the trace -------------------------------------------------------------------


@dataclass
class Phase:
    """Consecutive steps done by one membership (one world size, no restart)."""

    world: int
    records: list[Record] = field(default_factory=list)
    last_step: int = 0

    def add(self, r: Record) -> None:
        self.records.append(r)
        self.last_step = max(self.last_step, r["step"])

    @property
    def first_step(self) -> int:
        return min(int(r["step"]) for r in self.records)

    @property
    def pids(self) -> set[int]:
        return {r["pid"] for r in self.records}

    def done_at(self, step: int) -> float:
        """When every member had finished `step` (its last trace line)."""
        return max(float(r["t"]) for r in self.records if r["step"] == step)

    def step_gaps(self) -> list[float]:
        done: dict[int, float] = {}
        for r in self.records:
            done[r["step"]] = max(done.get(r["step"], 0.0), r["t"])
        steps = sorted(done)
        return [done[b] - done[a] for a, b in itertools.pairwise(steps)]


def phases(records: list[Record]) -> list[Phase]:
    """Split the trace, in time order, where the world size changes or the step counter goes
    back (a restart from a checkpoint)."""
    out: list[Phase] = []
    for r in sorted(records, key=lambda r: r["t"]):
        cur = out[-1] if out else None
        if cur is None or r["world"] != cur.world or r["step"] < cur.last_step - 1:
            cur = Phase(r["world"])
            out.append(cur)
        cur.add(r)
    return out


@dataclass
class Event:
    method: str
    event: str
    pause_ms: float  # time lost: the gap around the event minus an ordinary step interval
    gap_ms: float  # last step done before -> first step done after
    step_ms: float  # the ordinary step interval (median) of the run
    boundary_ms: float | None  # the step boundary that resized (in place)
    steps_lost: int
    restarted: int
    extra: dict[str, float] = field(default_factory=dict)


def events(method: str, records: list[Record]) -> list[Event]:
    ps = phases(records)
    gaps = [g for p in ps for g in p.step_gaps()]
    step_s = statistics.median(gaps) if gaps else 0.0
    out = []
    for before, after in itertools.pairwise(ps):
        gap = after.done_at(after.first_step) - before.done_at(before.last_step)
        new = after.pids - before.pids
        added = max(0, after.world - before.world)
        survivors = [r for r in after.records if r["step"] == after.first_step]
        survivors = [r for r in survivors if r["pid"] in before.pids]
        out.append(
            Event(
                method=method,
                event=f"{'grow' if after.world > before.world else 'shrink'} "
                f"{before.world}→{after.world}",
                pause_ms=(gap - step_s) * 1000,
                gap_ms=gap * 1000,
                step_ms=step_s * 1000,
                boundary_ms=max((r["sync_ms"] for r in survivors), default=None),
                steps_lost=before.last_step - (after.first_step - 1),
                restarted=max(0, len(new) - added),
            )
        )
    return out


def steps_after(world: int, n: int, after_phase: int = 0) -> Callable[[list[Record]], bool]:
    """The trace shows phase number > after_phase with this world and n steps done in it."""

    def probe(records: list[Record]) -> bool:
        ps = phases(records)
        return any(
            p.world == world and len({r["step"] for r in p.records}) >= n for p in ps[after_phase:]
        )

    return probe


def n_phases(records: list[Record]) -> int:
    return len(phases(records))


# --- the two methods ---------------------------------------------------------------------


@dataclass
class Config:
    step_time: float
    warm_steps: int  # steps to see in each membership before the next event
    checkpoint_every: int
    timeout_s: float  # bound on every wait for a state of the trace
    rdzv_conf: str  # torchrun's --rdzv-conf (is_host added)


def train_args(cfg: Config, run: Run) -> list[str]:
    return [
        str(SCRIPT),
        "--steps",
        "1000000",  # stopped by the bench, never by itself
        "--step-time",
        str(cfg.step_time),
        "--trace",
        str(run.trace_path),
    ]


def in_place(cfg: Config, run: Run) -> list[Event]:
    port = free_port()

    def env(wid: int, join: bool) -> dict[str, str]:
        e = base_env()
        e.update(
            {
                "SCHEDULERD_JOB_ID": "1",
                "SCHEDULERD_ATTEMPT": "0",
                "SCHEDULERD_ELASTIC": "1",
                "SCHEDULERD_WORKER_ID": str(wid),
                "SCHEDULERD_ELASTIC_INITIAL": "0,1",
                "SCHEDULERD_ELASTIC_JOIN": "1" if join else "0",
                "SCHEDULERD_ELASTIC_STORE": f"127.0.0.1:{port}",
                "SCHEDULERD_ELASTIC_MIN": "1",
                "SCHEDULERD_ELASTIC_MAX": "3",
                "SCHEDULERD_ELASTIC_TIMEOUT": "20",
            }
        )
        return e

    cmd = [sys.executable, *train_args(cfg, run)]
    workers = [run.spawn(f"worker{w}", cmd, env(w, join=False)) for w in (0, 1)]
    run.wait_for("2 workers training", steps_after(2, cfg.warm_steps), cfg.timeout_s)
    joiner = run.spawn("worker2", cmd, env(2, join=True))
    run.wait_for("the joiner admitted", steps_after(3, cfg.warm_steps), cfg.timeout_s)
    joiner.popen.send_signal(signal.SIGUSR1)  # to the worker itself (docs/elastic.md)
    run.wait_for("the shrink to 2", steps_after(2, cfg.warm_steps, after_phase=2), cfg.timeout_s)
    if run.wait_exit(joiner, 10) != 0:
        raise BenchError(f"the released worker did not exit 0:\n{run.logs()}")
    for w in workers:
        w.popen.send_signal(signal.SIGTERM)  # stop the job: every worker exits 143
    for w in workers:
        run.wait_exit(w, 15)
    found = events(IN_PLACE, run.trace())
    # Where the boundary goes, from worker 0's log (schedulerd.elastic logs each resize's
    # parts); the rest of the boundary is the flags all_reduce and worker 0 claiming joiners.
    resizes = RESIZE_LOG.findall(run.procs[0].output())
    for ev, parts in zip(found, resizes, strict=False):
        total, teardown, group, state, ddp = map(float, parts)
        ev.extra.update(
            {
                "teardown ms": teardown,
                "new group ms": group,
                "state ms": state,
                "DDP and hooks ms": ddp,
            }
        )
        if ev.boundary_ms is not None:
            ev.extra["rest of the boundary ms"] = max(0.0, ev.boundary_ms - total)
    return found


RESIZE_LOG = re.compile(
    r"generation \d+ at step \d+: .* in (\d+) ms "
    r"\(teardown (\d+), new group (\d+), state (\d+), DDP and hooks (\d+)\)"
)
GLOG_TIME = re.compile(r"^[IWE](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+) ")


def log_times(text: str, needle: str) -> list[float]:
    """Epoch times of the torchrun agent's log lines that contain `needle` (glog format,
    local time, no year)."""
    year = datetime.now().year
    out = []
    for line in text.splitlines():
        m = GLOG_TIME.match(line)
        if m and needle in line:
            mo, d, h, mi, s, frac = m.groups()
            us = int(frac.ljust(6, "0")[:6])
            out.append(datetime(year, int(mo), int(d), int(h), int(mi), int(s), us).timestamp())
    return out


def torchrun(cfg: Config, run: Run) -> list[Event]:
    port = free_port()
    env = base_env()
    # Without this, the second agent waited for a master address and scale-up hung
    # (docs/design/field-notes.md): workers get a store of their own from rank 0's node.
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    env["LOGLEVEL"] = "INFO"  # the agents' log: when they stop, re-rendezvous and start

    def agent(name: str, nproc: int, host: bool) -> Proc:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1:2",
            f"--nproc-per-node={nproc}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=bench",
            f"--rdzv-conf={cfg.rdzv_conf},is_host={int(host)}",
            "--max-restarts=3",  # a scale-down counts as a failure
            "--monitor-interval=0.1",
            "--local-addr=127.0.0.1",
            f"--log-dir={run.workdir / ('torchelastic-' + name)}",  # not a new dir in /tmp
            *train_args(cfg, run),
            "--checkpoint",
            str(run.workdir / "checkpoint"),
            "--checkpoint-every",
            str(cfg.checkpoint_every),
        ]
        return run.spawn(name, cmd, env)

    a = agent("agent-A", 2, host=True)
    run.wait_for("node A's 2 workers training", steps_after(2, cfg.warm_steps), cfg.timeout_s)
    b = agent("agent-B", 1, host=False)
    run.wait_for("node B joined: 3 workers", steps_after(3, cfg.warm_steps), cfg.timeout_s)
    b.popen.send_signal(signal.SIGTERM)  # to the agent: it stops its worker and exits
    run.wait_for(
        "node A alone again: 2 workers",
        steps_after(2, cfg.warm_steps, after_phase=2),
        cfg.timeout_s,
    )
    run.wait_exit(b, 10)
    a.popen.send_signal(signal.SIGTERM)
    run.wait_exit(a, 15)
    found = events(TORCHRUN, run.trace())
    # Where the pause goes, from agent A's log: the restart decision, the rendezvous, then
    # the new workers' start (import torch, process group, checkpoint, DDP) to their first step.
    log = a.output()
    decided = log_times(log, "will restart worker group")
    rdzv_done = log_times(log, "Rendezvous complete for workers")
    ps = phases(run.trace())
    for ev, before, after in zip(found, ps, ps[1:], strict=False):
        t_before = before.done_at(before.last_step)
        t_after = after.done_at(after.first_step)
        rdzv = [t for t in rdzv_done if t_before < t < t_after]
        if rdzv:
            ev.extra["worker start ms"] = (t_after - rdzv[-1]) * 1000
            ev.extra["until rendezvous done ms"] = (rdzv[-1] - t_before) * 1000
        dec = [t for t in decided if t_before - 1 < t < t_after]
        if dec:
            # 0: decided while the last step was being written
            ev.extra["until restart decided ms"] = max(0.0, dec[0] - t_before) * 1000
    return found


# --- the table ---------------------------------------------------------------------------


def fmt_range(values: list[float]) -> str:
    med = statistics.median(values)
    if min(values) == max(values):
        return f"{med:,.0f}"
    return f"{med:,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def table(all_events: list[Event]) -> str:
    rows = [
        "| method | event | runs | pause ms, median (min–max) | step ms | "
        "resize boundary ms | steps lost | workers restarted |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys: list[tuple[str, str]] = []
    for e in all_events:
        if (e.method, e.event) not in keys:
            keys.append((e.method, e.event))
    for method, event in keys:
        evs = [e for e in all_events if (e.method, e.event) == (method, event)]
        bounds = [e.boundary_ms for e in evs if e.boundary_ms is not None]
        lost = [float(e.steps_lost) for e in evs]
        restarted = [float(e.restarted) for e in evs]
        rows.append(
            f"| {method} | {event} | {len(evs)} | {fmt_range([e.pause_ms for e in evs])} | "
            f"{statistics.median(e.step_ms for e in evs):.0f} | "
            f"{fmt_range(bounds) if method.startswith('schedulerd') and bounds else '–'} | "
            f"{fmt_range(lost)} | {fmt_range(restarted)} |"
        )
    return "\n".join(rows)


def breakdown(all_events: list[Event], method: str, parts: list[str]) -> str:
    """ms, median (min-max) over the runs, of the parts of each event's pause."""
    rows = [
        "| event | " + " | ".join(p.removesuffix(" ms") for p in parts) + " |",
        "| --- |" + " ---: |" * len(parts),
    ]
    evs = [e for e in all_events if e.method == method]
    for event in dict.fromkeys(e.event for e in evs):
        cells = []
        for p in parts:
            vals = [e.extra[p] for e in evs if e.event == event and p in e.extra]
            cells.append(fmt_range(vals) if vals else "–")
        rows.append(f"| {event} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 run of each method instead of 3")
    p.add_argument("--runs", type=int, help="runs of each method (default 3, 1 with --quick)")
    p.add_argument("--step-time", type=float, default=0.02, help="seconds slept per step")
    p.add_argument("--warm-steps", type=int, default=20, help="steps seen between events")
    p.add_argument("--checkpoint-every", type=int, default=50, help="torchrun's checkpoints")
    p.add_argument("--timeout", type=float, default=90.0, help="bound on each wait, seconds")
    p.add_argument(
        "--rdzv-conf",
        default="last_call_timeout=1",
        help="torchrun's --rdzv-conf (default: a 1 s last call instead of 30 s)",
    )
    p.add_argument("--keep", action="store_true", help="keep the runs' traces and logs")
    args = p.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    cfg = Config(
        args.step_time, args.warm_steps, args.checkpoint_every, args.timeout, args.rdzv_conf
    )
    # Killed (SIGTERM) rather than interrupted: clean up all the same.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = Path(tempfile.mkdtemp(prefix="bench-resize-"))
    found: list[Event] = []
    t0 = time.monotonic()
    try:
        for i in range(runs):
            for name, scenario in (("inplace", in_place), ("torchrun", torchrun)):
                t = time.monotonic()
                with run_dir(root, f"{name}{i}") as run:
                    evs = scenario(cfg, run)
                found += evs
                summary = ", ".join(
                    f"{e.event}: pause {e.pause_ms:,.0f} ms, {e.steps_lost} lost" for e in evs
                )
                print(f"# {name} run {i + 1}/{runs} ({time.monotonic() - t:.0f} s): {summary}")
    finally:
        kill_tagged()
        if args.keep:
            print(f"# traces and logs in {root}")
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    print()
    print(table(found))
    print()
    print("In place: the resize boundary's parts (worker 0's log), ms:")
    print()
    parts = ["teardown ms", "new group ms", "state ms", "DDP and hooks ms"]
    print(breakdown(found, IN_PLACE, [*parts, "rest of the boundary ms"]))
    print()
    print("torchrun: the pause from the last step before (agent A's log and the trace), ms:")
    print()
    parts = ["until restart decided ms", "until rendezvous done ms", "worker start ms"]
    print(breakdown(found, TORCHRUN, parts))
    print()
    print(
        f"# {runs} run(s) of each, {time.monotonic() - t0:.0f} s; step time {cfg.step_time} s "
        f"slept + compute; torchrun: --rdzv-conf={cfg.rdzv_conf}, "
        f"TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, --max-restarts=3, --monitor-interval=0.1, "
        f"--checkpoint-every {cfg.checkpoint_every}; {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
