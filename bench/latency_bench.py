"""Scheduling latency with real processes: the daemon and agents (fake GPUs) on 127.0.0.1.

    .venv/bin/python bench/latency_bench.py                  # both parts, about 3 minutes
    .venv/bin/python bench/latency_bench.py --part start --jobs 200 --ticks default,0.2
    .venv/bin/python bench/latency_bench.py --part reclaim --rounds 5

(a) `start`: submit-to-running on an idle cluster (2 agents x 4 fake GPUs, one
    consumer). 1-GPU jobs, one at a time: each job's shell writes the time it
    started (`date +%s.%N`) and sleeps 50 ms; the next job is submitted once the
    previous one ended, so the cluster is idle at every submission. Measured from
    SubmitJob returning (the acknowledgment: the row is committed) to
      - RUNNING: the daemon's update on a WatchJobs stream opened beforehand, stamped
        when this process receives it (event-driven, no polling; time.time(),
        microseconds). RUNNING means the start is committed and sent to the agent;
      - process: the job's own timestamp, written by its first command.
    The daemon's events give the server's side: `submitted` -> `started` (the
    cycle: wake, snapshot, decide, commit). Run once per daemon --tick setting.

(b) `reclaim`: the elastic-shrink path. Consumer A (/research, share 1) runs an
    elastic job (examples/elastic_train.py, 1 to 4 workers, gloo on the CPU, 50 ms
    of sleep per step) grown to fill the cluster (2 agents x 2 fake GPUs); consumer
    B (/prod, share 3) submits a 1-GPU job. Measured from SubmitJob returning to B's
    job RUNNING (WatchJobs) and to its process start, broken down with the daemon's
    events: B submitted -> A `shrink-requested` (the cycle that decided the shrink
    and sent the release) -> A `shrunk` (the released worker left at a step
    boundary and its agent reported the GPU free) -> B `started` (the next cycle)
    -> B's process start. After each round B's job ends and A grows back to 4
    workers (a joiner starts and imports torch) before the next round.

Every process shares this machine's cores; prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _cluster import REPO, BenchCluster, percentile, wait_for

from schedulerd.api.v1 import jobs_pb2
from schedulerd.client import Client

ENDED = (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED)


class Watcher:
    """One WatchJobs stream in a thread: when each job was first seen in each state."""

    def __init__(self, address: str) -> None:
        self.client = Client(address)
        self.seen: dict[tuple[int, int], float] = {}
        self.cond = threading.Condition()
        self.stream = self.client.watch(include_current=False)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for job in self.stream:
                now = time.time()
                with self.cond:
                    self.seen.setdefault((job.id, job.state), now)
                    self.cond.notify_all()
        except Exception:
            pass  # closed

    def wait(self, job_id: int, states: tuple[int, ...], timeout_s: float = 60.0) -> float:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for s in states:
                    if (job_id, s) in self.seen:
                        return self.seen[(job_id, s)]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"job {job_id}: no state {states} within {timeout_s} s")
                self.cond.wait(left)

    def close(self) -> None:
        self.client.close()


@contextmanager
def cluster(policy: str, agents: dict[str, int], tick_s: float | None) -> Iterator[BenchCluster]:
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
        c = BenchCluster(Path(tmp), policy, tick_s)
        try:
            c.start_daemon()
            for node, gpus in agents.items():
                c.start_agent(node, gpus)
            c.wait_nodes_up(len(agents))
            yield c
        finally:
            c.stop()


def _events(job: jobs_pb2.Job) -> list[tuple[str, float]]:
    return [(e.kind, e.time.seconds + e.time.nanos / 1e9) for e in job.history]


def _first(events: list[tuple[str, float]], kind: str, after: float = 0.0) -> float:
    return min(t for k, t in events if k == kind and t >= after - 1e-3)


def _stamp_job(stamps: Path, sleep_s: float) -> list[str]:
    script = f'date +%s.%N > {stamps}/"$SCHEDULERD_JOB_ID"; exec sleep {sleep_s}'
    return ["sh", "-c", script]


def _stamp(stamps: Path, job_id: int, timeout_s: float = 30.0) -> float:
    path = stamps / str(job_id)
    text = wait_for(f"job {job_id}'s start stamp", lambda: path.exists() and path.read_text())
    return float(text)


def _summary(name: str, values_ms: list[float]) -> str:
    return (
        f"| {name} | {statistics.median(values_ms):,.0f} | {percentile(values_ms, 99):,.0f} "
        f"| {min(values_ms):,.0f} | {max(values_ms):,.0f} |"
    )


# -- (a) submit to running on an idle cluster ----------------------------------

START_POLICY = """
version: 1
users: "*"
consumers:
  team: {share: 1}
"""


def part_start(jobs: int, ticks: list[float | None]) -> None:
    print("### (a) submit to running, idle cluster (2 agents x 4 fake GPUs), 1-GPU jobs\n")
    for tick in ticks:
        with cluster(START_POLICY, {"n1": 4, "n2": 4}, tick) as c:
            stamps = c.root / "stamps"
            stamps.mkdir()
            watcher = Watcher(c.address)
            rows: dict[str, list[float]] = {
                "SubmitJob call": [],
                "ack -> RUNNING (WatchJobs)": [],
                "ack -> process started": [],
                "daemon: submitted -> started events": [],
                "daemon: started event -> process started": [],
            }
            try:
                for i in range(jobs + 5):  # the first 5 warm up, not counted
                    t0 = time.time()
                    job = c.client.submit("/team", _stamp_job(stamps, 0.05), 1, name=f"j{i}")
                    acked = time.time()
                    running = watcher.wait(job.id, (jobs_pb2.RUNNING, *ENDED))
                    started = _stamp(stamps, job.id)
                    watcher.wait(job.id, ENDED)
                    if i < 5:
                        continue
                    ev = _events(c.client.get_job(job.id))
                    rows["SubmitJob call"].append((acked - t0) * 1000)
                    rows["ack -> RUNNING (WatchJobs)"].append((running - acked) * 1000)
                    rows["ack -> process started"].append((started - acked) * 1000)
                    rows["daemon: submitted -> started events"].append(
                        (_first(ev, "started") - _first(ev, "submitted")) * 1000
                    )
                    rows["daemon: started event -> process started"].append(
                        (started - _first(ev, "started")) * 1000
                    )
            finally:
                watcher.close()
        label = "default (1.0)" if tick is None else f"{tick:g}"
        print(f"daemon --tick {label} s; {jobs} jobs\n")
        print("| interval | p50 ms | p99 ms | min ms | max ms |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, values in rows.items():
            print(_summary(name, values))
        print(flush=True)


# -- (b) reclaim on the elastic-shrink path -------------------------------------

RECLAIM_POLICY = """
version: 1
users: "*"
consumers:
  research: {share: 1, grace: 20s}
  prod: {share: 3}
"""


def _world(trace: Path) -> int:
    if not trace.exists():
        return 0
    lines = [ln for ln in trace.read_text().splitlines() if ln.strip()]
    try:
        return int(json.loads(lines[-1])["world"]) if lines else 0
    except (ValueError, KeyError):
        return 0  # a line being written


def part_reclaim(rounds: int, tick: float | None, b_seconds: float) -> None:
    print(
        "### (b) reclaim on the elastic-shrink path (2 agents x 2 fake GPUs; "
        "A elastic 1:4 on /research share 1, B 1 GPU on /prod share 3)\n"
    )
    with cluster(RECLAIM_POLICY, {"n1": 2, "n2": 2}, tick) as c:
        stamps = c.root / "stamps"
        stamps.mkdir()
        trace = c.root / "trace.jsonl"
        watcher = Watcher(c.address)
        a = c.client.submit(
            "/research",
            [
                sys.executable,
                str(REPO / "examples" / "elastic_train.py"),
                "--steps",
                "10000000",
                "--step-time",
                "0.05",
                "--trace",
                str(trace),
            ],
            gpus=1,
            gpus_max=4,
            env={"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"},
            name="elastic-A",
        )
        t_grow = time.time()
        wait_for("A on 4 workers", lambda: _world(trace) == 4, timeout_s=180)
        print(f"A grew from 1 to 4 workers in {time.time() - t_grow:.1f} s\n")
        cols = [
            "ack -> B RUNNING (WatchJobs)",
            "ack -> B process started",
            "B submitted -> A shrink-requested (decide, release sent)",
            "A shrink-requested -> A shrunk (worker left, GPU reported free)",
            "A shrunk -> B started (next cycle)",
            "B started -> B process started",
        ]
        rows: dict[str, list[float]] = {k: [] for k in cols}
        regrow: list[float] = []
        try:
            for r in range(rounds):
                b = c.client.submit("/prod", _stamp_job(stamps, b_seconds), 1, name=f"B{r}")
                acked = time.time()
                running = watcher.wait(b.id, (jobs_pb2.RUNNING, *ENDED), timeout_s=120)
                started = _stamp(stamps, b.id)
                bev = _events(c.client.get_job(b.id))
                aev = _events(c.client.get_job(a.id))
                b_sub = _first(bev, "submitted")
                b_start = _first(bev, "started")
                a_req = _first(aev, "shrink-requested", after=b_sub)
                a_shrunk = _first(aev, "shrunk", after=a_req)
                rows[cols[0]].append((running - acked) * 1000)
                rows[cols[1]].append((started - acked) * 1000)
                rows[cols[2]].append((a_req - b_sub) * 1000)
                rows[cols[3]].append((a_shrunk - a_req) * 1000)
                rows[cols[4]].append((b_start - a_shrunk) * 1000)
                rows[cols[5]].append((started - b_start) * 1000)
                watcher.wait(b.id, ENDED, timeout_s=b_seconds + 60)
                t0 = time.time()
                wait_for("A back on 4 workers", lambda: _world(trace) == 4, timeout_s=180)
                regrow.append(time.time() - t0)
        finally:
            c.client.cancel(a.id)
            watcher.close()
    label = "default (1.0)" if tick is None else f"{tick:g}"
    print(
        f"daemon --tick {label} s; {rounds} rounds; B's job sleeps {b_seconds:g} s, then A "
        f"grows back to 4 workers (took {statistics.median(regrow):.1f} s median)\n"
    )
    print("| interval | p50 ms | p99 ms | min ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in cols:
        print(_summary(name, rows[name]))
    print("\nper round, ms:\n")
    print("| round | " + " | ".join(cols) + " |")
    print("| ---: |" + " ---: |" * len(cols))
    for r in range(rounds):
        print(f"| {r + 1} | " + " | ".join(f"{rows[k][r]:,.0f}" for k in cols) + " |")
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["start", "reclaim", "both"], default="both")
    ap.add_argument("--jobs", type=int, default=200, help="(a) jobs per tick setting")
    ap.add_argument(
        "--ticks", default="default,0.2", help="(a) daemon --tick values; 'default' = its own"
    )
    ap.add_argument("--rounds", type=int, default=5, help="(b) reclaim rounds")
    ap.add_argument("--tick", default="default", help="(b) daemon --tick")
    ap.add_argument("--b-seconds", type=float, default=2.0, help="(b) how long B's job runs")
    args = ap.parse_args(argv)

    def tick_of(text: str) -> float | None:
        return None if text == "default" else float(text)

    print(f"Python {platform.python_version()} on {platform.machine()}\n")
    if args.part in ("start", "both"):
        part_start(args.jobs, [tick_of(t) for t in args.ticks.split(",") if t])
    if args.part in ("reclaim", "both"):
        part_reclaim(args.rounds, tick_of(args.tick), args.b_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
