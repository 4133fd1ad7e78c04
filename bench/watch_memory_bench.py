"""The daemon's memory while --jobs jobs are submitted with --watchers slow watchers.

    .venv/bin/python bench/watch_memory_bench.py      # 0, then 20 watchers; 100,000 jobs
    .venv/bin/python bench/watch_memory_bench.py --jobs 20000 --watchers 20

Each run gets a fresh daemon (`python -m schedulerd.daemon`, its own temporary folder
and store, the default tick, a policy with `run_as_root: true` and one consumer /bench,
no agent: every job stays pending, so the daemon keeps all of them in memory).

A slow watcher is a WatchJobs stream (include_current=False) on its own channel and
connection, made with the raw gRPC stub so that this process decides when to read:
it reads one update (a probe job submitted once every stream is open, proving that the
daemon has registered it) and then reads nothing until every job is submitted. The
daemon keeps at most 8 MiB of updates (their serialized size) queued per watcher and
then ends it with RESOURCE_EXHAUSTED; the end is seen only once the watcher reads up
to it, so at the end every watcher reads all it is sent and reports how many updates
it got, the last job it heard of (where it was cut off) and its final status.

Jobs are submitted with SubmitJobs, --batch jobs per call, from --threads threads
(one Client each). The daemon's VmRSS and VmHWM (/proc/PID/status) are read at the
start, once the watchers are open, every --every submissions, at the end of the
submissions, --settle seconds later, and after the watchers have been read to the end
and closed. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from _cluster import BenchCluster

from schedulerd.api.v1 import jobs_pb2, jobs_pb2_grpc
from schedulerd.client import Client, ClientError, job_spec

POLICY = """
version: 1
run_as_root: true
users: "*"
consumers:
  bench: {share: 1}
"""
CONSUMER = "/bench"
COMMAND = ["sleep", "3600"]


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


@dataclass
class Sample:
    point: str
    submitted: int
    at_s: float
    rss_mib: float
    hwm_mib: float


@dataclass
class Watcher:
    """One WatchJobs stream read only when told to."""

    address: str
    channel: grpc.Channel = field(init=False)
    first: threading.Event = field(default_factory=threading.Event)
    drain: threading.Event = field(default_factory=threading.Event)
    updates: int = 0
    update_bytes: int = 0
    job_ids: set[int] = field(default_factory=set)
    last_job: int = 0
    code: str = ""
    details: str = ""
    drained_s: float = 0.0
    still_open: bool = False

    def __post_init__(self) -> None:
        # Its own connection, as a separate client's would be (not one shared subchannel).
        self.channel = grpc.insecure_channel(
            self.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        stub = jobs_pb2_grpc.SchedulerStub(self.channel)
        self.call = stub.WatchJobs(jobs_pb2.WatchJobsRequest(include_current=False))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        t0 = 0.0
        try:
            for n, update in enumerate(self.call):
                if n == 0:
                    self.first.set()
                    self.drain.wait()  # stall: the daemon's queue for us fills up
                    t0 = time.monotonic()
                else:
                    self.drained_s = time.monotonic() - t0
                self.updates += 1
                self.update_bytes += update.ByteSize()
                self.job_ids.add(update.job.id)
                self.last_job = max(self.last_job, update.job.id)
            self.code = "OK (stream ended)"
        except grpc.RpcError as e:
            if not self.still_open:
                self.code = e.code().name
                self.details = e.details() or ""

    def read_to_the_end(self, quiet_s: float) -> None:
        """Wait until the stream ended, or until it was quiet for `quiet_s` (a watcher
        that was not cut off stays open: then cancel it and say so)."""
        seen = -1
        while self.thread.is_alive() and self.updates != seen:
            seen = self.updates
            self.thread.join(quiet_s)
        if self.thread.is_alive():
            self.still_open = True
            self.close()
            self.thread.join(10)
            self.code = "still open"

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


@dataclass
class Run:
    watchers: int
    jobs: int
    samples: list[Sample]
    submit_s: float
    watched: list[Watcher]
    errors: list[str]
    log_problems: list[str]


def run(
    watchers: int,
    jobs: int,
    threads: int,
    batch: int,
    every: int,
    settle_s: float,
    tick: float | None,
) -> Run:
    with tempfile.TemporaryDirectory(prefix="watch-bench-") as tmp:
        cluster = BenchCluster(Path(tmp), POLICY, tick)
        cluster.client.close()
        cluster.client = Client(cluster.address, timeout_s=120, token="")
        watched: list[Watcher] = []
        try:
            cluster.start_daemon()
            assert cluster.daemon is not None
            pid = cluster.daemon.pid
            t_start = time.monotonic()
            samples: list[Sample] = []
            lock = threading.Lock()
            submitted = 0

            def sample(point: str) -> None:
                rss, hwm = memory_mib(pid)
                samples.append(Sample(point, submitted, time.monotonic() - t_start, rss, hwm))
                print(
                    f"  {point}: VmRSS {rss:,.0f} MiB, VmHWM {hwm:,.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )

            time.sleep(1.0)
            sample("start")
            watched = [Watcher(cluster.address) for _ in range(watchers)]
            deadline = time.monotonic() + 60
            while watched and not all(w.first.is_set() for w in watched):
                if time.monotonic() > deadline:
                    raise SystemExit("the watchers did not all hear of the probe job")
                cluster.client.submit(CONSUMER, COMMAND, 1, name="probe")
                round_end = time.monotonic() + 1.0
                for w in watched:
                    w.first.wait(max(0.0, round_end - time.monotonic()))
            sample(f"{watchers} watchers open")

            errors: list[str] = []
            next_mark = every
            batches = [min(batch, jobs - k) for k in range(0, jobs, batch)]
            todo = iter(range(len(batches)))

            def submit_worker() -> None:
                nonlocal submitted, next_mark
                with Client(cluster.address, timeout_s=300, token="") as c:
                    while True:
                        with lock:
                            i = next(todo, None)
                        if i is None:
                            return
                        specs = [
                            job_spec(CONSUMER, COMMAND, 1, name=f"w{i}-{k}")
                            for k in range(batches[i])
                        ]
                        try:
                            c.submit_many(specs)
                        except ClientError as e:
                            with lock:
                                errors.append(f"batch {i}: {e.code.name}: {e.details}")
                            continue
                        with lock:
                            submitted += len(specs)
                            if submitted >= next_mark:
                                sample(f"{submitted:,} submitted")
                                while next_mark <= submitted:
                                    next_mark += every

            t0 = time.monotonic()
            pool = [threading.Thread(target=submit_worker) for _ in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            submit_s = time.monotonic() - t0
            if not samples[-1].point.startswith(f"{submitted:,}"):
                sample(f"{submitted:,} submitted")
            time.sleep(settle_s)
            sample(f"{settle_s:g} s later")
            for w in watched:
                w.drain.set()
            for w in watched:
                w.read_to_the_end(quiet_s=3.0)
            time.sleep(1.0)
            sample("watchers read to the end and closed")
        finally:
            for w in watched:
                w.close()
            cluster.stop()
        log = (Path(tmp) / "daemon.log").read_text(errors="replace").splitlines()
        problems = [ln for ln in log if " ERROR " in ln or "Traceback" in ln or "INTERNAL" in ln]
        return Run(watchers, jobs, samples, submit_s, watched, errors, problems)


def _timeline(runs: list[Run]) -> None:
    print(
        "| point | "
        + " | ".join(f"{r.watchers} watchers: s, VmRSS MiB, VmHWM MiB" for r in runs)
        + " |"
    )
    print("| --- |" + " ---: |" * len(runs))
    points: list[str] = []
    for r in runs:
        for s in r.samples:
            key = _point_key(s.point)
            if key not in points:
                points.append(key)
    for p in points:
        cells = []
        for r in runs:
            got = [s for s in r.samples if _point_key(s.point) == p]
            cells.append(
                f"{got[0].at_s:,.0f} s, {got[0].rss_mib:,.0f}, {got[0].hwm_mib:,.0f}"
                if got
                else "–"
            )
        print(f"| {p} | " + " | ".join(cells) + " |")


def _point_key(point: str) -> str:
    return "watchers open" if point.endswith("watchers open") else point


def _watchers(runs: list[Run]) -> None:
    print(
        "| watchers | jobs | submit s | jobs/s | ended RESOURCE_EXHAUSTED | other ends "
        "| updates received, min–max | their bytes, MiB | jobs heard of | last job heard of "
        "| s to read them |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | --- | ---: |")
    for r in runs:
        w = r.watched
        exhausted = sum(1 for x in w if x.code == "RESOURCE_EXHAUSTED")
        other = ", ".join(sorted({x.code for x in w if x.code != "RESOURCE_EXHAUSTED"})) or "–"

        def span(values: list[float], fmt: str) -> str:
            return f"{min(values):{fmt}}–{max(values):{fmt}}" if values else "–"

        print(
            f"| {r.watchers} | {r.jobs:,} | {r.submit_s:.1f} | {r.jobs / r.submit_s:,.0f} "
            f"| {exhausted} | {other} | {span([x.updates for x in w], ',.0f')} "
            f"| {span([x.update_bytes / 2**20 for x in w], '.2f')} "
            f"| {span([len(x.job_ids) for x in w], ',.0f')} "
            f"| {span([x.last_job for x in w], ',.0f')} "
            f"| {statistics.median([x.drained_s for x in w]) if w else 0:.1f} |"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000, help="jobs per run (default 100,000)")
    ap.add_argument("--watchers", default="0,20", help="slow watchers per run (default 0,20)")
    ap.add_argument("--threads", type=int, default=3, help="submitting threads (default 3)")
    ap.add_argument("--batch", type=int, default=1_000, help="jobs per SubmitJobs (default 1,000)")
    ap.add_argument(
        "--every", type=int, default=10_000, help="sample every N jobs (default 10,000)"
    )
    ap.add_argument("--settle", type=float, default=5.0, help="seconds before the last samples")
    ap.add_argument("--tick", type=float, default=None, help="daemon --tick (default: its own)")
    args = ap.parse_args(argv)
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.jobs:,} jobs in SubmitJobs of {args.batch:,} from {args.threads} threads; "
        f"daemon tick {'default' if args.tick is None else args.tick}; load average before "
        f"{os.getloadavg()[0]:.2f}\n",
        flush=True,
    )
    runs = []
    for n in (int(x) for x in args.watchers.split(",") if x):
        print(f"{n} watchers", file=sys.stderr, flush=True)
        runs.append(run(n, args.jobs, args.threads, args.batch, args.every, args.settle, args.tick))
    _timeline(runs)
    print()
    _watchers(runs)
    for r in runs:
        for w in r.watched[:1]:
            if w.details:
                print(f"\n{r.watchers} watchers, the first one's status: {w.code}: {w.details}")
        if r.errors:
            print(f"\n{r.watchers} watchers: {len(r.errors)} batches failed, first: {r.errors[0]}")
        if r.log_problems:
            print(
                f"\n{r.watchers} watchers: the daemon's log has "
                f"{len(r.log_problems)} problem lines:"
            )
            for ln in r.log_problems[:10]:
                print(f"    {ln}")
    print(f"\nload average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
