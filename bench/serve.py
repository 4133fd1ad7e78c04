"""Inference services under a step of load, and the router's own cost (issue 12).

    flock /tmp/bench.lock .venv/bin/python bench/serve.py            # about 5½ minutes
    .venv/bin/python bench/serve.py --quick                          # about 3 minutes

One real daemon, one agent of 4 fake GPUs and one `schedulerd-router`, all processes
started as for real on 127.0.0.1. Replicas are `examples/serve/model_server.py` (the
PyTorch spiral classifier, trained at start, CPU) with `--delay-ms` added to every
request, 1 GPU each.

Part 1, the step: the same open-loop profile (low rate, then high, then low; requests
leave on schedule whatever happens, so an overloaded service shows as latency or
failures) against three deployments, one after the other:

- static max: min = max = 4 replicas;
- static min: min = max = 1;
- autoscaled: 1..4, target_in_flight, window and scale_down_delay as printed.

Per phase (before, during and after the step): sent, failed, p50 and p99 latency. For
the whole profile: the seconds from the step to each new replica serving (the service
history's `replica-ready` events: the router probed it ready and reported so), GPU-hours
held (each replica job's start..end, clipped to the profile, × its GPUs) and the ideal
for the load: per phase ceil(rate × latency / target_in_flight) replicas (at least
min 1), latency being the p50 of static max's low phase, × the phase's length.

Part 2, the router's overhead: a service of one replica that answers at once
(bench/_serve_echo.py), hit straight at its port and through the router, one request
at a time (added latency: p50, p99 of each and the difference) and 16 at a time, closed
loop (requests/s through one router process; the client is one Python process on the
same cores, so the direct figure bounds what the client itself can do).

Prints Markdown tables and a verdict against the issue's goals; docs/benchmarks.md has
the numbers of these machines.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from _cluster import REPO, BenchCluster, free_port, percentile, wait_for

from schedulerd.api.v1 import serving_pb2 as pb
from schedulerd.client import ClientError

MODEL = REPO / "examples" / "serve" / "model_server.py"
ECHO = REPO / "bench" / "_serve_echo.py"
GPUS = 4
# Not "n1": an agent's cgroups are named after its node (schedulerd-NODE), and an agent
# that starts kills what it finds there and does not own, so two agents of one name on
# this machine (another run's tests) would kill each other's jobs.
NODE = f"serve-bench-{os.getpid()}"
POLICY = """version: 1
run_as_root: true
consumers:
  serve-max: {share: 1, grace: 10s}
  serve-min: {share: 1, grace: 10s}
  serve-auto: {share: 1, grace: 10s}
  serve-echo: {share: 1, grace: 10s}
"""
PHASES = ("before", "during", "after")


@dataclass(frozen=True)
class Deployment:
    name: str
    label: str
    min_replicas: int
    max_replicas: int


DEPLOYMENTS = (
    Deployment("serve-max", "static max (4)", GPUS, GPUS),
    Deployment("serve-min", "static min (1)", 1, 1),
    Deployment("serve-auto", "autoscaled (1..4)", 1, GPUS),
)


@dataclass
class Sent:
    phase: int
    at: float  # time.time() when it left
    latency_ms: float = 0.0
    failure: str = ""  # "" answered 2xx; else the status, "error" or "timeout"


@dataclass
class Outcome:
    deployment: Deployment
    t0: float  # the profile's start, time.time()
    t_step: float
    t_down: float
    t_end: float
    requests: list[Sent]
    ready_after_step: list[float] = field(default_factory=list)  # s from the step
    scale_events: list[str] = field(default_factory=list)
    gpu_s: float = 0.0


# --- processes ------------------------------------------------------------------------


def start_router(root: Path, daemon: str, listen: str) -> subprocess.Popen[bytes]:
    log = open(root / "router.log", "ab")  # noqa: SIM115 - lives with the process
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    router = subprocess.Popen(
        [sys.executable, "-m", "schedulerd.router", "--daemon", daemon, "--listen", listen,
         "--no-config", "--name", "bench"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env,
    )  # fmt: skip
    return router


def spec(d: Deployment, args: argparse.Namespace, command: list[str]) -> pb.ServiceSpec:
    return pb.ServiceSpec(
        name=d.name,
        consumer=f"/{d.name}",
        command=command,
        env={"OMP_NUM_THREADS": "1"},
        working_dir=str(REPO),
        gpus_per_replica=1,
        min_replicas=d.min_replicas,
        max_replicas=d.max_replicas,
        target_in_flight=args.target,
        window_s=args.window,
        scale_down_delay_s=args.scale_down_delay,
        readiness_path="/healthz",
        public=True,
        request_timeout_s=60,
    )


def _seconds(ts: object) -> float:
    return float(ts.seconds) + float(ts.nanos) / 1e9  # type: ignore[attr-defined]


def wait_serving(cluster: BenchCluster, url: str, name: str, replicas: int) -> None:
    """The service has `replicas` ready and the router answers through it."""

    def ready() -> bool:
        svc = cluster.client.get_service(name)
        if svc.ready_replicas < replicas:
            return False
        return asyncio.run(_one_ok(url))

    wait_for(f"{name}: {replicas} replicas ready", ready, timeout_s=180)


async def _one_ok(url: str) -> bool:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        try:
            async with s.post(url, json={"inputs": [[0.1, 0.2]]}) as resp:
                await resp.read()
                return resp.status == 200
        except aiohttp.ClientError:
            return False


def delete_and_wait(cluster: BenchCluster, name: str) -> None:
    cluster.client.delete_service(name)

    def gone() -> bool:
        try:
            svc = cluster.client.get_service(name)
        except ClientError:
            return True
        return svc.state == pb.SERVICE_DELETED or not svc.replicas

    wait_for(f"{name} deleted", gone, timeout_s=90)
    consumer = f"/{name}"
    wait_for(
        f"{name}'s jobs ended",
        lambda: not cluster.client.list_jobs(consumer=consumer, states=["RUNNING"]),
        timeout_s=60,
    )


# --- part 1: the step -----------------------------------------------------------------


async def open_loop(url: str, profile: list[tuple[float, float]]) -> tuple[float, list[Sent]]:
    """Requests leave at each phase's rate on a fixed schedule (as load.py does), whatever
    the earlier ones are doing. Returns the start (time.time()) and every request."""
    sent: list[Sent] = []
    tasks: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=90)
    body = {"inputs": [[0.25, -0.5]]}

    async def one(s: Sent, session: aiohttp.ClientSession) -> None:
        began = time.monotonic()
        try:
            async with session.post(url, json=body) as resp:
                await resp.read()
                status = resp.status
        except TimeoutError:
            s.failure = "timeout"
            return
        except aiohttp.ClientError as e:
            s.failure = f"error:{type(e).__name__}"
            return
        s.latency_ms = (time.monotonic() - began) * 1000
        if not 200 <= status < 300:
            s.failure = str(status)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        t0_wall, t0 = time.time(), time.monotonic()
        start = t0
        for index, (seconds, rate) in enumerate(profile):
            n = 0
            while rate > 0 and n / rate < seconds:
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                n += 1
                s = Sent(index, t0_wall + (time.monotonic() - t0))
                sent.append(s)
                task = asyncio.create_task(one(s, session))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            start += seconds
            rest = start - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
        if tasks:
            await asyncio.gather(*tasks)
    return t0_wall, sent


def gpu_seconds(cluster: BenchCluster, consumer: str, lo: float, hi: float) -> float:
    """GPUs × seconds each of the consumer's jobs ran within [lo, hi]."""
    total = 0.0
    now = time.time()
    for job in cluster.client.list_jobs(consumer=consumer):
        if not job.HasField("start_time"):
            continue
        start = _seconds(job.start_time)
        end = _seconds(job.end_time) if job.HasField("end_time") else now
        overlap = min(end, hi) - max(start, lo)
        if overlap > 0:
            total += overlap * max(1, len(job.gpus))
    return total


def run_step(
    cluster: BenchCluster,
    router_url: str,
    d: Deployment,
    args: argparse.Namespace,
    profile: list[tuple[float, float]],
) -> Outcome:
    command = [
        *(sys.executable, str(MODEL), "--delay-ms", f"{args.delay_ms:g}"),
        *("--max-concurrency", str(args.max_concurrency)),
    ]
    cluster.client.create_service(spec(d, args, command))
    url = f"{router_url}/services/{d.name}/predict"
    began = time.monotonic()
    wait_serving(cluster, url, d.name, d.min_replicas)
    print(f"  {d.label}: serving after {time.monotonic() - began:.1f} s", file=sys.stderr)
    t0, requests = asyncio.run(open_loop(url, profile))
    t_step = t0 + profile[0][0]
    t_down = t_step + profile[1][0]
    t_end = t_down + profile[2][0]
    svc = cluster.client.get_service(d.name)
    out = Outcome(d, t0, t_step, t_down, t_end, requests)
    for e in svc.history:
        at = _seconds(e.time)
        if at < t0:
            continue
        if e.kind == "replica-ready" and at >= t_step:
            out.ready_after_step.append(at - t_step)
        if e.kind.startswith("scale"):
            out.scale_events.append(f"{at - t_step:+.1f}s {e.kind}: {e.message}")
    # The jobs' end times are final once the service is gone; GPU time within the profile.
    delete_and_wait(cluster, d.name)
    out.gpu_s = gpu_seconds(cluster, f"/{d.name}", t0, t_end)
    return out


# --- part 2: the router's overhead ----------------------------------------------------


async def closed_loop(
    url: str, concurrency: int, seconds: float, count: int
) -> tuple[list[float], int, float]:
    """`concurrency` workers, each sending its next request when the last is answered,
    for `seconds` (or `count` requests in all). Returns latencies (ms), failures, rate."""
    latencies: list[float] = []
    failed = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(20):  # warm the connections up
            async with session.get(url) as resp:
                await resp.read()
        deadline = time.monotonic() + seconds
        began = time.monotonic()

        async def worker() -> None:
            nonlocal failed
            while time.monotonic() < deadline and len(latencies) + failed < count:
                t = time.monotonic()
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append((time.monotonic() - t) * 1000)
                else:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    return latencies, failed, (len(latencies) + failed) / elapsed


def router_overhead(cluster: BenchCluster, router_url: str, args: argparse.Namespace) -> list[str]:
    d = Deployment("serve-echo", "echo", 1, 1)
    cluster.client.create_service(spec(d, args, [sys.executable, str(ECHO)]))
    via = f"{router_url}/services/{d.name}/x"
    wait_for("echo ready", lambda: cluster.client.get_service(d.name).ready_replicas >= 1, 120)
    wait_for("echo through the router", lambda: asyncio.run(_get_ok(via)), 30)
    address = cluster.client.get_service(d.name).replicas[0].address
    direct = f"http://{address}/x"
    count = 300 if args.quick else 2000
    seconds = 5.0 if args.quick else 10.0
    rows = []
    single: dict[str, list[float]] = {}
    for label, url in (("direct", direct), ("through the router", via)):
        lat, failed, _ = asyncio.run(closed_loop(url, 1, 120, count))
        single[label] = lat
        lat16, failed16, rate16 = asyncio.run(closed_loop(url, 16, seconds, 10**9))
        rows.append(
            f"| {label} | {percentile(lat, 50):.2f} | {percentile(lat, 99):.2f} | "
            f"{percentile(lat16, 50):.2f} | {percentile(lat16, 99):.2f} | {rate16:,.0f} | "
            f"{failed + failed16} |"
        )
    d50 = percentile(single["through the router"], 50) - percentile(single["direct"], 50)
    d99 = percentile(single["through the router"], 99) - percentile(single["direct"], 99)
    rows.append(f"| added by the router | {d50:+.2f} | {d99:+.2f} | | | | |")
    delete_and_wait(cluster, d.name)
    header = [
        f"One request at a time ({count} requests) and 16 at a time, closed loop, "
        f"{seconds:g} s; ms.\n",
        "| path | p50 (1 at a time) | p99 (1 at a time) | p50 (16) | p99 (16) | "
        "requests/s (16) | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    return header + rows


async def _get_ok(url: str) -> bool:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        try:
            async with s.get(url) as resp:
                await resp.read()
                return resp.status == 200
        except aiohttp.ClientError:
            return False


# --- the report -----------------------------------------------------------------------


def ideal_gpu_s(profile: list[tuple[float, float]], latency_s: float, target: float) -> float:
    return sum(max(1, math.ceil(rate * latency_s / target)) * s for s, rate in profile)


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q):,.0f}" if values else "–"


def phase_table(outcomes: list[Outcome], profile: list[tuple[float, float]]) -> list[str]:
    lines = [
        "| deployment | phase | rate/s | sent | failed | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        for i, phase in enumerate(PHASES):
            mine = [r for r in o.requests if r.phase == i]
            ok = [r.latency_ms for r in mine if not r.failure]
            failures = Counter(r.failure for r in mine if r.failure)
            failed = " ".join(f"{k}: {v}" for k, v in sorted(failures.items())) or "0"
            lines.append(
                f"| {o.deployment.label} | {phase} ({profile[i][0]:g} s) | {profile[i][1]:g} | "
                f"{len(mine):,} | {failed} | {_ms(ok, 50)} | {_ms(ok, 99)} |"
            )
        # The step's first seconds, apart: where a late replica shows.
        first = [
            r.latency_ms for r in o.requests
            if r.phase == 1 and not r.failure and r.at < o.t_step + 10
        ]  # fmt: skip
        lines.append(
            f"| {o.deployment.label} | (first 10 s of the step) | {profile[1][1]:g} | "
            f"{sum(1 for r in o.requests if r.phase == 1 and r.at < o.t_step + 10):,} | | "
            f"{_ms(first, 50)} | {_ms(first, 99)} |"
        )
    return lines


def summary_table(outcomes: list[Outcome], ideal: float) -> list[str]:
    lines = [
        "| deployment | step → each new replica serving (s) | GPU-hours | × ideal | "
        "requests failed |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        ready = ", ".join(f"{s:.1f}" for s in sorted(o.ready_after_step)) or "–"
        failed = sum(1 for r in o.requests if r.failure)
        lines.append(
            f"| {o.deployment.label} | {ready} | {o.gpu_s / 3600:.4f} | "
            f"{o.gpu_s / ideal:.2f} | {failed} of {len(o.requests):,} |"
        )
    lines.append(f"| ideal for the load | | {ideal / 3600:.4f} | 1.00 | |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a shorter profile (about 3 minutes)")
    p.add_argument("--low", type=float, default=4.0, help="requests/s before and after")
    p.add_argument("--high", type=float, default=36.0, help="requests/s during the step")
    p.add_argument("--delay-ms", type=float, default=200.0, help="model_server --delay-ms")
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=2,
        help="model_server --max-concurrency: requests a replica computes at once; the "
        "rest queue in it, so that too few replicas show as latency (default 2)",
    )
    p.add_argument("--target", type=float, default=2.0, help="target_in_flight")
    p.add_argument("--window", type=float, default=10.0, help="the autoscaler's window, s")
    p.add_argument("--scale-down-delay", type=float, default=10.0, help="seconds")
    p.add_argument("--keep", action="store_true", help="keep the logs' folder")
    args = p.parse_args()
    lengths = (10.0, 25.0, 20.0) if args.quick else (20.0, 40.0, 30.0)
    profile = [(lengths[0], args.low), (lengths[1], args.high), (lengths[2], args.low)]

    root = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    cluster = BenchCluster(root, POLICY)
    router = None
    outcomes: list[Outcome] = []
    try:
        cluster.start_daemon()
        cluster.start_agent(NODE, GPUS)
        cluster.wait_nodes_up(1)
        listen = f"127.0.0.1:{free_port()}"
        router = start_router(root, cluster.address, listen)
        router_url = f"http://{listen}"
        wait_for("the router", lambda: asyncio.run(_get_ok(f"{router_url}/healthz")), 30)
        print("router overhead...", file=sys.stderr)
        overhead = router_overhead(cluster, router_url, args)
        for d in DEPLOYMENTS:
            print(f"{d.label}...", file=sys.stderr)
            outcomes.append(run_step(cluster, router_url, d, args, profile))
    finally:
        if router is not None and router.poll() is None:
            router.terminate()
            router.wait(30)
        cluster.stop()
        if args.keep or not outcomes:
            print(f"logs in {root}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)

    base = [r.latency_ms for r in outcomes[0].requests if r.phase == 0 and not r.failure]
    latency_s = percentile(base, 50) / 1000
    ideal = ideal_gpu_s(profile, latency_s, args.target)
    auto = outcomes[2]
    profile_text = ", ".join(f"{s:g} s at {r:g}/s" for s, r in profile)
    print(
        f"{os.cpu_count()} cores, {GPUS} fake GPUs on one agent; profile {profile_text} "
        f"(open loop, evenly spaced); model_server --delay-ms {args.delay_ms:g} "
        f"--max-concurrency {args.max_concurrency}; "
        f"autoscaled: target_in_flight {args.target:g}, window {args.window:g} s, "
        f"scale_down_delay {args.scale_down_delay:g} s.\n"
    )
    print("### The step: latency per phase\n")
    print("\n".join(phase_table(outcomes, profile)))
    print("\n### Replicas, GPU-hours, failures\n")
    print(
        f"Ideal: per phase ceil(rate × {latency_s * 1000:.0f} ms / {args.target:g}) replicas "
        f"(the latency is static max's p50 before the step) × the phase's length.\n"
    )
    print("\n".join(summary_table(outcomes, ideal)))
    print("\nThe autoscaler's decisions (time from the step):\n")
    for line in auto.scale_events:
        print(f"- {line}")
    print("\n### The router's overhead\n")
    print("\n".join(overhead))

    first = min(auto.ready_after_step) if auto.ready_after_step else math.inf
    lost = sum(1 for r in auto.requests if r.failure)
    ratio = auto.gpu_s / ideal
    print("\n### Against the goals (the autoscaled service)\n")
    print(f"- first new replica serving {first:.1f} s after the step (goal ≤ 10 s): "
          f"{'met' if first <= 10 else 'missed'}")  # fmt: skip
    print(f"- requests failed: {lost} (goal 0): {'met' if lost == 0 else 'missed'}")
    print(f"- GPU-hours {ratio:.2f}× the ideal (goal ≤ 1.3×): "
          f"{'met' if ratio <= 1.3 else 'missed'}")  # fmt: skip


if __name__ == "__main__":
    main()
