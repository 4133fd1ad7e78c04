"""Time one scheduling cycle, `decide(snapshot, policy, now)`, at growing sizes.

    .venv/bin/python bench/decide_bench.py            # full run, up to 1,000 nodes x 8 GPUs
    .venv/bin/python bench/decide_bench.py --quick    # small sizes only, a few seconds
    .venv/bin/python bench/decide_bench.py --size issue4   # 1,250 nodes x 8, 500 consumers,
                                                           # 50,000 pending (issue 4's scale)

Two cases per size, inputs built with a seeded RNG (the same numbers every run):
- cold start: an empty cluster and a big backlog (the most starts one cycle makes);
- steady state: the cluster mostly full of running jobs, a few GPUs free, a big
  backlog (the cycle the daemon runs most often).
The consumer tree has two levels (parents x leaves) with owned GPUs, shares of 1-4,
a few limits and a few `lend: false` consumers. Job sizes are 1, 2, 4 or 8 GPUs
(half of them 1). Prints a Markdown table; the time is the median of several runs.
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import random
import statistics
import sys
import time
from dataclasses import dataclass

from schedulerd.core import (
    ROOT,
    ConsumerPath,
    ConsumerPolicy,
    GpuSlot,
    Job,
    JobId,
    JobPhase,
    Node,
    NodeName,
    Order,
    Policy,
    Snapshot,
    decide,
)

GPUS_PER_NODE = 8
SIZES = [1, 1, 1, 1, 2, 2, 4, 8]  # drawn uniformly: half 1-GPU jobs


@dataclass(frozen=True)
class Size:
    nodes: int
    parents: int
    leaves_per_parent: int
    pending: int


FULL = [
    Size(10, 4, 5, 200),
    Size(100, 10, 10, 2_000),
    Size(500, 20, 10, 10_000),
    Size(1_000, 20, 10, 20_000),
]
QUICK = FULL[:2]
# Issue 4's scale: 10,000 GPUs (1,250 nodes x 8), 500 leaf consumers, 50,000 pending jobs.
ISSUE4 = [Size(1_250, 25, 20, 50_000)]
SIZES_BY_NAME = {"full": FULL, "quick": QUICK, "issue4": ISSUE4, "all": [*FULL, *ISSUE4]}


def build_policy(rng: random.Random, size: Size, capacity: int) -> Policy:
    consumers = {ROOT: ConsumerPolicy(ROOT)}
    n_leaves = size.parents * size.leaves_per_parent
    # Half the cluster is owned, spread over the leaves; the rest is surplus.
    owned_per_leaf = capacity // 2 // n_leaves
    orders = list(Order)
    for p in range(size.parents):
        parent = ConsumerPath(f"/p{p:02d}")
        leaves = [ConsumerPath(f"{parent}/l{i:02d}") for i in range(size.leaves_per_parent)]
        owned = [owned_per_leaf + rng.randint(-1, 1) if owned_per_leaf else 0 for _ in leaves]
        owned = [max(0, o) for o in owned]
        consumers[parent] = ConsumerPolicy(
            parent,
            owned=sum(owned),
            share=float(rng.randint(1, 4)),
            limit=None if rng.random() < 0.8 else max(sum(owned), capacity // size.parents * 2),
        )
        for leaf, own in zip(leaves, owned, strict=True):
            consumers[leaf] = ConsumerPolicy(
                leaf,
                owned=own,
                share=float(rng.randint(1, 4)),
                limit=None if rng.random() < 0.9 else max(own, 1) * 4,
                lend=rng.random() > 0.05,
                order=rng.choice(orders),
            )
    return Policy(consumers=consumers)


def build_snapshot(
    rng: random.Random, size: Size, policy: Policy, fill: float
) -> tuple[Snapshot, int]:
    """Nodes, running jobs filling `fill` of the GPUs, and `size.pending` waiting jobs."""
    nodes = tuple(
        Node(NodeName(f"node{i:04d}"), tuple(range(GPUS_PER_NODE))) for i in range(size.nodes)
    )
    leaves = list(policy.leaves())
    jobs: list[Job] = []
    seq = 0
    target = int(fill * size.nodes * GPUS_PER_NODE)
    used = 0
    for node in nodes:
        free = list(node.gpus)
        while free and used < target:
            n = rng.choice([s for s in SIZES if s <= len(free)])
            n = min(n, target - used)
            held = tuple(GpuSlot(node.name, i) for i in free[:n])
            free = free[n:]
            used += n
            seq += 1
            jobs.append(_job(rng, seq, rng.choice(leaves), n, JobPhase.RUNNING, held))
    running = len(jobs)
    for _ in range(size.pending):
        seq += 1
        jobs.append(_job(rng, seq, rng.choice(leaves), rng.choice(SIZES), JobPhase.PENDING, ()))
    users = [f"user{i}" for i in range(20)]
    usage = {(leaf, u): rng.random() * 1e6 for leaf in leaves for u in rng.sample(users, 3)}
    return Snapshot(nodes=nodes, jobs=tuple(jobs), user_usage=usage), running


def _job(
    rng: random.Random,
    seq: int,
    consumer: ConsumerPath,
    n: int,
    phase: JobPhase,
    held: tuple[GpuSlot, ...],
) -> Job:
    return Job(
        id=JobId(seq),
        consumer=consumer,
        user=f"user{rng.randrange(20)}",
        gpus_min=n,
        gpus_max=n,
        priority=rng.choice([0, 0, 0, 1, 5]),
        submit_seq=seq,
        phase=phase,
        held=held,
        started_at=0.0 if phase is JobPhase.RUNNING else None,
    )


def time_case(snapshot: Snapshot, policy: Policy, repeats: int) -> tuple[float, int]:
    times = []
    starts = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan = decide(snapshot, policy, 1_000.0)
        times.append(time.perf_counter() - t0)
        starts = len(plan.starts)
    return statistics.median(times) * 1000, starts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (= --size quick)")
    ap.add_argument(
        "--size",
        choices=sorted(SIZES_BY_NAME),
        default=None,
        help="full (default): 10 to 1,000 nodes; quick: the two small ones; "
        "issue4: 1,250 nodes, 500 consumers, 50,000 pending; all: full and issue4",
    )
    ap.add_argument("--repeats", type=int, default=0, help="runs per case (default: by size)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--profile", action="store_true", help="print a cProfile of the largest steady case"
    )
    args = ap.parse_args(argv)
    sizes = SIZES_BY_NAME[args.size or ("quick" if args.quick else "full")]
    print(f"Python {platform.python_version()} on {platform.machine()}; seed {args.seed}\n")
    print("| case | nodes | GPUs | consumers | running | pending | starts | ms per cycle |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    last = None
    for size in sizes:
        capacity = size.nodes * GPUS_PER_NODE
        for case, fill in (("cold start", 0.0), ("steady state", 0.99)):
            rng = random.Random(f"{args.seed}-{size}-{case}")
            policy = build_policy(rng, size, capacity)
            snapshot, running = build_snapshot(rng, size, policy, fill)
            repeats = args.repeats or (
                7 if size.pending <= 2_000 else 5 if size.pending <= 20_000 else 3
            )
            ms, starts = time_case(snapshot, policy, repeats)
            consumers = f"{len(policy.consumers) - 1} ({size.parents} x {size.leaves_per_parent})"
            print(
                f"| {case} | {size.nodes:,} | {capacity:,} | {consumers} | {running:,} "
                f"| {size.pending:,} | {starts:,} | {ms:,.0f} |",
                flush=True,
            )
            last = (snapshot, policy)
    if args.profile and last is not None:
        snapshot, policy = last
        prof = cProfile.Profile()
        prof.enable()
        decide(snapshot, policy, 1_000.0)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
