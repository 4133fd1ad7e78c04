"""Durable submissions per second through gRPC, the daemon started as for real.

    .venv/bin/python bench/submit_bench.py                 # 2,000 jobs per case
    .venv/bin/python bench/submit_bench.py --jobs 500      # quicker

The daemon runs as `python -m schedulerd.daemon` (its store in WAL mode with
synchronous=FULL: a submission is acknowledged only once its row is committed and
fsynced), with one agent of 8 fake GPUs that is drained before the run, so nothing
starts: only submissions and the scheduling cycles they wake (each submission wakes
the loop, which decides over every waiting job, as in production). Every case gets
a fresh daemon and database in a temporary folder on the same disk as the repository.

Cases:
- SubmitJob (unary), 1 client: one call at a time from this process;
- SubmitJob (unary), K clients: K processes (own channel each), started together;
- SubmitJobs (batch RPC, one SQLite transaction per call), batches of B jobs.
Per-call latency is measured around each call in the client; throughput is jobs
over the wall time from the first call to the last answer. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

from _cluster import BenchCluster, percentile

from schedulerd.client import Client, job_spec

POLICY = """
version: 1
users: "*"
consumers:
  bench: {share: 1}
"""
CONSUMER = "/bench"
COMMAND = ["sleep", "3600"]
WARMUP = 20  # calls before timing, per client


@dataclass
class Result:
    case: str
    clients: int
    batch: int
    jobs: int
    wall_s: float
    latencies_ms: list[float]  # per call
    first_ms: list[float]  # the first tenth of each client's calls (short queue)
    last_ms: list[float]  # the last tenth (the queue holds nearly every job)


def _unary_worker(address: str, n: int, go: Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    with Client(address, timeout_s=60) as c:
        for _ in range(WARMUP // 4):
            c.submit(CONSUMER, COMMAND, 1, name="warmup")
        ready_at = time.monotonic()
        go.wait()
        lat = []
        first = time.monotonic()
        for i in range(n):
            t0 = time.perf_counter()
            c.submit(CONSUMER, COMMAND, 1, name=f"u{i}")
            lat.append((time.perf_counter() - t0) * 1000)
        out.put((ready_at, first, time.monotonic(), lat))


def run_unary(cluster: BenchCluster, jobs: int, clients: int) -> Result:
    if clients == 1:
        c = cluster.client
        for _ in range(WARMUP):
            c.submit(CONSUMER, COMMAND, 1, name="warmup")
        lat = []
        t_start = time.perf_counter()
        for i in range(jobs):
            t0 = time.perf_counter()
            c.submit(CONSUMER, COMMAND, 1, name=f"u{i}")
            lat.append((time.perf_counter() - t0) * 1000)
        wall = time.perf_counter() - t_start
        return Result("SubmitJob (unary)", 1, 1, jobs, wall, lat, *_ends([lat]))
    ctx = mp.get_context("spawn")  # no gRPC state inherited through fork
    go = ctx.Event()
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    share = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]
    procs = [ctx.Process(target=_unary_worker, args=(cluster.address, n, go, out)) for n in share]
    for p in procs:
        p.start()
    time.sleep(0.5)
    go.set()
    got = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(30)
    first = min(g[1] for g in got)
    last = max(g[2] for g in got)
    lat = [x for g in got for x in g[3]]
    first_ms, last_ms = _ends([g[3] for g in got])
    return Result("SubmitJob (unary)", clients, 1, jobs, last - first, lat, first_ms, last_ms)


def run_batch(cluster: BenchCluster, jobs: int, batch: int) -> Result:
    c = cluster.client
    for _ in range(WARMUP):
        c.submit(CONSUMER, COMMAND, 1, name="warmup")
    specs = [job_spec(CONSUMER, COMMAND, 1, name=f"b{i}") for i in range(jobs)]
    lat = []
    t_start = time.perf_counter()
    for k in range(0, jobs, batch):
        t0 = time.perf_counter()
        got = c.submit_many(specs[k : k + batch])
        lat.append((time.perf_counter() - t0) * 1000)
        assert len(got) == len(specs[k : k + batch])
    wall = time.perf_counter() - t_start
    return Result("SubmitJobs (batch)", 1, batch, jobs, wall, lat, *_ends([lat]))


def _ends(per_client: list[list[float]]) -> tuple[list[float], list[float]]:
    first: list[float] = []
    last: list[float] = []
    for lat in per_client:
        k = max(1, len(lat) // 10)
        first += lat[:k]
        last += lat[-k:]
    return first, last


def with_cluster(tick_s: float | None, case: str, fn):  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="submit-bench-", dir=_tmp_root()) as tmp:
        cluster = BenchCluster(Path(tmp), POLICY, tick_s)
        try:
            cluster.start_daemon()
            cluster.start_agent("n1", 8)
            cluster.wait_nodes_up(1)
            cluster.client.drain("n1", "submit benchmark: nothing starts")
            result = fn(cluster)
            # Every acknowledged job is there, waiting; none started.
            listed = cluster.client.list_jobs()
            waiting = sum(1 for j in listed if j.state == 1)
            if waiting != len(listed) or len(listed) < result.jobs:
                raise SystemExit(f"{case}: {len(listed)} jobs listed, {waiting} waiting")
            return result
        finally:
            cluster.stop()


def _tmp_root() -> str:
    return tempfile.gettempdir()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2_000, help="jobs per case (default 2,000)")
    ap.add_argument("--clients", default="1,4", help="unary client counts (default 1,4)")
    ap.add_argument("--batches", default="100,1000", help="SubmitJobs batch sizes")
    ap.add_argument("--tick", type=float, default=None, help="daemon --tick (default: its own)")
    args = ap.parse_args(argv)
    print(
        f"Python {platform.python_version()} on {platform.machine()}; {args.jobs:,} jobs per case; "
        f"daemon tick {'default' if args.tick is None else args.tick}; store in {_tmp_root()}\n"
    )
    results: list[Result] = []
    for k in (int(x) for x in args.clients.split(",") if x):
        results.append(
            with_cluster(args.tick, f"unary x{k}", lambda c, k=k: run_unary(c, args.jobs, k))
        )
        _row(results[-1])
    for b in (int(x) for x in args.batches.split(",") if x):
        results.append(
            with_cluster(args.tick, f"batch {b}", lambda c, b=b: run_batch(c, args.jobs, b))
        )
        _row(results[-1])
    return 0


_header_printed = False


def _row(r: Result) -> None:
    global _header_printed
    if not _header_printed:
        print(
            "| RPC | clients | jobs per call | jobs | calls | wall s | jobs/s | calls/s "
            "| ms per call, p50 | p99 | max | p50, first tenth | p50, last tenth |"
        )
        print("| --- |" + " ---: |" * 12)
        _header_printed = True
    calls = len(r.latencies_ms)
    print(
        f"| {r.case} | {r.clients} | {r.batch:,} | {r.jobs:,} | {calls:,} | {r.wall_s:.2f} "
        f"| {r.jobs / r.wall_s:,.0f} | {calls / r.wall_s:,.0f} "
        f"| {statistics.median(r.latencies_ms):.2f} | {percentile(r.latencies_ms, 99):.2f} "
        f"| {max(r.latencies_ms):.2f} | {statistics.median(r.first_ms):.2f} "
        f"| {statistics.median(r.last_ms):.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
