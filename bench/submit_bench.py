"""Durable submissions per second through gRPC, the daemon started as for real.

    .venv/bin/python bench/submit_bench.py                 # 2,000 jobs per case
    .venv/bin/python bench/submit_bench.py --jobs 500      # quicker
    .venv/bin/python bench/submit_bench.py --auth tls-token --clients 1,4,8 --batches ""

The daemon runs as `python -m schedulerd.daemon` (its store in WAL mode with
synchronous=FULL: a submission is acknowledged only once its row is committed and
fsynced), with one agent of 8 fake GPUs that is drained before the run, so nothing
starts: only submissions and the scheduling cycles they wake (each submission wakes
the loop, which decides over every waiting job, as in production). Every case gets
a fresh daemon and database in a temporary folder on the same disk as the repository.

With `--auth tls-token` (issue 15's measure) the daemon instead serves TLS on
127.0.0.1 (`--tls-loopback`, a server certificate of a fresh cluster CA) and every
client calls with a bearer token (root's, made by CreateToken), as bench/auth_bench.py's
configuration c; there is no agent then (the jobs stay pending all the same).

Cases:
- SubmitJob (unary), 1 client: one call at a time from one client process;
- SubmitJob (unary), K clients: K processes (own channel each), started together;
- SubmitJobs (batch RPC, one SQLite transaction per call), batches of B jobs;
- with --floor, Health/Check and WhoAmI from the same K processes first (each on a fresh
  daemon too): the floor of a unary call on that transport, and with the credential.
Per-call latency is measured around each call in the client; throughput is jobs
over the wall time from the first call to the last answer. The CPU columns say where
two cores go, whatever else runs on the machine: the daemon's CPU time (user + system,
all its threads, from /proc) over the timed calls per job, and the clients' own
(process_time) per call. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

from _cluster import BenchCluster, percentile
from auth_bench import Daemon as AuthDaemon
from auth_bench import os_user
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
    daemon_cpu_s: float = 0.0  # the daemon's CPU time (user + system) over the timed calls
    client_cpu_s: float = 0.0  # the clients' own, over their timed calls


@dataclass(frozen=True)
class Target:
    """Where and how the clients call: address, bearer token ("" : none), CA file."""

    address: str
    token: str = ""
    ca: str = ""
    daemon_pid: int = 0  # for the daemon's CPU time (/proc/PID/stat)

    def client(self) -> Client:
        return Client(
            self.address,
            timeout_s=60,
            token=self.token or None,
            ca=Path(self.ca) if self.ca else None,
        )


def _call(c: Client, rpc: str) -> Callable[[int], object]:
    if rpc == "Health/Check":
        stub, req = health_pb2_grpc.HealthStub(c.channel), health_pb2.HealthCheckRequest()
        return lambda i: stub.Check(req, timeout=60)
    if rpc == "WhoAmI":
        return lambda i: c.whoami()
    return lambda i: c.submit(CONSUMER, COMMAND, 1, name=f"u{i}")


def _unary_worker(target: Target, n: int, rpc: str, go: Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    with target.client() as c:
        call = _call(c, rpc)
        for i in range(WARMUP // 4):
            call(i)
        ready_at = time.monotonic()
        go.wait()
        lat = []
        first = time.monotonic()
        cpu = time.process_time()
        for i in range(n):
            t0 = time.perf_counter()
            call(i)
            lat.append((time.perf_counter() - t0) * 1000)
        out.put((ready_at, first, time.monotonic(), lat, time.process_time() - cpu))


def run_unary(target: Target, jobs: int, clients: int, rpc: str = "SubmitJob") -> Result:
    # Every client in a process of its own (also the one sequential client): none shares
    # a GIL with another or with this process, which only starts and collects them.
    ctx = mp.get_context("spawn")  # no gRPC state inherited through fork
    go = ctx.Event()
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    share = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]
    procs = [ctx.Process(target=_unary_worker, args=(target, n, rpc, go, out)) for n in share]
    for p in procs:
        p.start()
    time.sleep(0.5)
    cpu = _cpu_s(target.daemon_pid)
    go.set()
    got = [out.get(timeout=600) for _ in procs]
    daemon_cpu = _cpu_s(target.daemon_pid) - cpu
    for p in procs:
        p.join(30)
    first = min(g[1] for g in got)
    last = max(g[2] for g in got)
    lat = [x for g in got for x in g[3]]
    first_ms, last_ms = _ends([g[3] for g in got])
    return Result(
        f"{rpc} (unary)",
        clients,
        1,
        jobs,
        last - first,
        lat,
        first_ms,
        last_ms,
        daemon_cpu,
        sum(g[4] for g in got),
    )


def _cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc; 0 without a pid."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_batch(target: Target, jobs: int, batch: int) -> Result:
    with target.client() as c:
        cpu = _cpu_s(target.daemon_pid)
        result = _run_batch(c, jobs, batch)
        result.daemon_cpu_s = _cpu_s(target.daemon_pid) - cpu
        return result


def _run_batch(c: Client, jobs: int, batch: int) -> Result:
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


def with_cluster(tick_s: float | None, auth: str, case: str, fn):  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="submit-bench-", dir=_tmp_root()) as tmp:
        if auth == "tls-token":
            return _with_tls(Path(tmp), tick_s, case, fn)
        cluster = BenchCluster(Path(tmp), POLICY, tick_s)
        try:
            cluster.start_daemon()
            cluster.start_agent("n1", 8)
            cluster.wait_nodes_up(1)
            cluster.client.drain("n1", "submit benchmark: nothing starts")
            assert cluster.daemon is not None
            result = fn(Target(cluster.address, daemon_pid=cluster.daemon.pid))
            _check(cluster.client, case, result)
            return result
        finally:
            cluster.stop()


def _with_tls(root: Path, tick_s: float | None, case: str, fn):  # type: ignore[no-untyped-def]
    daemon = AuthDaemon(root, tls=True, unix=False, tick_s=tick_s)
    try:
        daemon.start()
        with daemon.client("", daemon.address) as boot:  # root, by its local uid
            token = boot.create_token(os_user(), 3600.0).secret
        assert daemon.proc is not None
        target = Target(daemon.address, token, str(daemon.ca), daemon.proc.pid)
        result = fn(target)
        with target.client() as c:
            _check(c, case, result)
        return result
    finally:
        daemon.stop()


def _check(c: Client, case: str, result: Result) -> None:
    """Every acknowledged job is there, waiting; none started."""
    if not result.case.startswith("Submit"):
        return  # a floor: no job
    listed = c.list_jobs()  # every page
    waiting = sum(1 for j in listed if j.state == 1)
    if waiting != len(listed) or len(listed) < result.jobs:
        raise SystemExit(f"{case}: {len(listed)} jobs listed, {waiting} waiting")


def _tmp_root() -> str:
    return tempfile.gettempdir()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2_000, help="jobs per case (default 2,000)")
    ap.add_argument("--clients", default="1,4", help="unary client counts (default 1,4)")
    ap.add_argument("--batches", default="100,1000", help="SubmitJobs batch sizes")
    ap.add_argument("--tick", type=float, default=None, help="daemon --tick (default: its own)")
    ap.add_argument(
        "--auth",
        choices=("local", "tls-token"),
        default="local",
        help="local: plaintext loopback, the caller known by its uid, one drained agent "
        "(the default); tls-token: TLS on 127.0.0.1 and a bearer token, no agent",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also time Health/Check (no credential looked at) and WhoAmI (the credential "
        "only) from the same client processes: what any unary call costs here",
    )
    args = ap.parse_args(argv)
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.jobs:,} jobs per case; auth {args.auth}; daemon tick "
        f"{'default' if args.tick is None else args.tick}; store in {_tmp_root()}; "
        f"load average before {os.getloadavg()[0]:.2f}\n"
    )
    results: list[Result] = []
    rpcs = ["Health/Check", "WhoAmI", "SubmitJob"] if args.floor else ["SubmitJob"]
    for k in (int(x) for x in args.clients.split(",") if x):
        for rpc in rpcs:
            results.append(
                with_cluster(
                    args.tick,
                    args.auth,
                    f"{rpc} x{k}",
                    lambda t, k=k, rpc=rpc: run_unary(t, args.jobs, k, rpc),
                )
            )
            _row(results[-1])
    for b in (int(x) for x in args.batches.split(",") if x):
        results.append(
            with_cluster(
                args.tick, args.auth, f"batch {b}", lambda t, b=b: run_batch(t, args.jobs, b)
            )
        )
        _row(results[-1])
    print(f"\nload average after {os.getloadavg()[0]:.2f}")
    return 0


_header_printed = False


def _row(r: Result) -> None:
    global _header_printed
    if not _header_printed:
        print(
            "| RPC | clients | jobs per call | jobs | calls | wall s | jobs/s | calls/s "
            "| ms per call, p50 | p99 | max | p50, first tenth | p50, last tenth "
            "| daemon CPU ms per job | clients' CPU ms per call |"
        )
        print("| --- |" + " ---: |" * 14)
        _header_printed = True
    calls = len(r.latencies_ms)
    print(
        f"| {r.case} | {r.clients} | {r.batch:,} | {r.jobs:,} | {calls:,} | {r.wall_s:.2f} "
        f"| {r.jobs / r.wall_s:,.0f} | {calls / r.wall_s:,.0f} "
        f"| {statistics.median(r.latencies_ms):.2f} | {percentile(r.latencies_ms, 99):.2f} "
        f"| {max(r.latencies_ms):.2f} | {statistics.median(r.first_ms):.2f} "
        f"| {statistics.median(r.last_ms):.2f} | {1000 * r.daemon_cpu_s / r.jobs:.2f} "
        f"| {1000 * r.client_cpu_s / calls if r.client_cpu_s else 0:.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
