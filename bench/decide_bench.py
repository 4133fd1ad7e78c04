"""Time one scheduling cycle, `decide(snapshot, policy, now)`, at growing sizes, before
and after issue 15's incremental cycle.

    .venv/bin/python bench/decide_bench.py            # full run, up to 1,000 nodes x 8 GPUs
    .venv/bin/python bench/decide_bench.py --quick    # small sizes only, a few seconds
    .venv/bin/python bench/decide_bench.py --size issue4   # 1,250 nodes x 8, 500 consumers,
                                                           # 50,000 pending (issue 4's scale)
    .venv/bin/python bench/decide_bench.py --size issue15  # issue4's, and 2,500 nodes x 8
                                                           # with 100,000 pending

Three cases per size, inputs built with a seeded RNG (the same numbers every run):
- cold start: an empty cluster and a big backlog (the most starts one cycle makes);
- steady state: the cluster mostly full of running jobs, a few GPUs free, a big
  backlog, decided once from nothing (no cache);
- steady cycles: the same cluster cycle after cycle, as the daemon runs it: each
  plan applied (its starts run), then a few jobs end and a few are submitted, and
  the next cycle decided with the cache the last one left (core.DecideCache).
"before" is the core as it was (tests/reference_core, kept for the plan-equality
suite), "after" today's; both decide the same snapshots, and their plans are checked
equal on the way.
The consumer tree has two levels (parents x leaves) with owned GPUs, shares of 1-4,
a few limits and a few `lend: false` consumers. Job sizes are 1, 2, 4 or 8 GPUs
(half of them 1). Prints a Markdown table; the time is the median of several runs.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import platform
import pstats
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from schedulerd.core import (
    ROOT,
    Changes,
    ConsumerPath,
    ConsumerPolicy,
    DecideCache,
    GpuSlot,
    Job,
    JobId,
    JobPhase,
    Node,
    NodeName,
    Order,
    Plan,
    Policy,
    Snapshot,
    decide,
)

# The core as it was before the incremental cycle, kept by the tests as the reference.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import reference_core

NOW = 1_000.0
# What a cycle is timed by: the wall clock, or with --cpu this process's CPU time (on a
# machine others load, the wall clock counts the time spent waiting for a core).
_clock = time.perf_counter
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
# Issue 15's second goal: 20,000 GPUs and 100,000 waiting jobs.
ISSUE15 = [*ISSUE4, Size(2_500, 25, 20, 100_000)]
SIZES_BY_NAME = {
    "full": FULL,
    "quick": QUICK,
    "issue4": ISSUE4,
    "issue15": ISSUE15,
    "all": [*FULL, *ISSUE15],
}
# Per steady cycle: running jobs that end, and jobs submitted.
ENDS_PER_CYCLE = 10
SUBMITS_PER_CYCLE = 10
# Steady cycles run before the measured ones (not timed).
WARM_CYCLES = 5


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


def time_case(snapshot: Snapshot, policy: Policy, repeats: int) -> tuple[float, float, int]:
    """One cycle from nothing: (before ms, after ms, starts), medians."""
    before, after = [], []
    starts = 0
    for _ in range(repeats):
        gc.collect()  # each timed call starts from a collected heap (time_cycles)
        t0 = _clock()
        want = reference_core.decide(snapshot, policy, NOW)
        t1 = _clock()
        gc.collect()
        t1b = _clock()
        plan = decide(snapshot, policy, NOW)
        t2 = _clock()
        before.append(t1 - t0)
        after.append(t2 - t1b)
        _check(plan, want)
        starts = len(plan.starts)
    return statistics.median(before) * 1000, statistics.median(after) * 1000, starts


def time_cycles(
    rng: random.Random, snapshot: Snapshot, policy: Policy, repeats: int
) -> tuple[float, float, float]:
    """Steady cycles: (before ms, after ms, mean starts per cycle), medians over `repeats`
    cycles after a first one that fills the cache."""
    cache = DecideCache()
    plan = decide(snapshot, policy, NOW, cache)
    seq = max(j.submit_seq for j in snapshot.jobs)
    for _ in range(WARM_CYCLES):  # the first cycles' reclaims play out
        snapshot, seq = advance(rng, snapshot, plan, policy, seq)
        plan = decide(snapshot, policy, NOW, cache)
    before, after, starts = [], [], []
    for _ in range(repeats):
        snapshot, seq = advance(rng, snapshot, plan, policy, seq)
        # Each timed call starts from a collected heap, so that the garbage one leaves
        # is not collected on the other's time (the collector stays on during the call).
        gc.collect()
        t0 = _clock()
        want = reference_core.decide(snapshot, policy, NOW)
        t1 = _clock()
        gc.collect()
        t1b = _clock()
        plan = decide(snapshot, policy, NOW, cache)
        t2 = _clock()
        before.append(t1 - t0)
        after.append(t2 - t1b)
        _check(plan, want)
        starts.append(len(plan.starts))
    return (
        statistics.median(before) * 1000,
        statistics.median(after) * 1000,
        statistics.mean(starts),
    )


def advance(
    rng: random.Random, snapshot: Snapshot, plan: Plan, policy: Policy, seq: int
) -> tuple[Snapshot, int]:
    """The next cycle's snapshot, as the daemon would see it: the plan's starts run, its
    preemptions stop (the job's GPUs on their way back) and its shrinks release; a stop
    or release under way completes with even odds (a preempted job back in the queue);
    ENDS_PER_CYCLE running jobs end, SUBMITS_PER_CYCLE jobs are submitted. Unchanged
    jobs are the same values, as the daemon keeps them (daemon/state.py)."""
    started = {s.job_id: s for s in plan.starts}
    stopped = {p.job_id for p in plan.preemptions}
    shrunk = {sh.job_id: sh.slots for sh in plan.shrinks}
    grown = {g.job_id: g.slots for g in plan.grows}
    jobs = []
    for j in snapshot.jobs:
        s = started.get(j.id)
        if s is not None:
            j = replace(j, phase=JobPhase.RUNNING, held=s.slots, started_at=NOW)
        elif j.stopping and rng.random() < 0.5:
            j = replace(
                j,
                phase=JobPhase.PENDING,
                held=(),
                releasing=(),
                stopping=False,
                started_at=None,
                release_deadline=None,
                preemptions=j.preemptions + 1,
                waiting_since=NOW,
            )
        elif j.releasing and rng.random() < 0.5:
            held = tuple(x for x in j.held if x not in j.releasing)
            j = replace(j, held=held, releasing=(), release_deadline=None)
        if j.id in stopped:
            j = replace(j, stopping=True, release_deadline=NOW + 30.0)
        if j.id in shrunk:
            j = replace(j, releasing=(*j.releasing, *shrunk[j.id]), release_deadline=NOW + 30)
        if j.id in grown:
            j = replace(j, held=(*j.held, *grown[j.id]))
        jobs.append(j)
    running = [i for i, j in enumerate(jobs) if j.phase is JobPhase.RUNNING and j.id not in started]
    for i in sorted(rng.sample(running, min(ENDS_PER_CYCLE, len(running))), reverse=True):
        del jobs[i]
    leaves = list(policy.leaves())
    for _ in range(SUBMITS_PER_CYCLE):
        seq += 1
        jobs.append(_job(rng, seq, rng.choice(leaves), rng.choice(SIZES), JobPhase.PENDING, ()))
    # What changed, as the daemon says it (core.Changes): jobs changed, came or went.
    kept = {j.id: j for j in snapshot.jobs}
    delta: dict[JobId, Job | None] = {j.id: j for j in jobs if kept.get(j.id) is not j}
    delta.update((i, None) for i in kept.keys() - {j.id for j in jobs})
    gen = snapshot.changes.generation if snapshot.changes is not None else 0
    changes = Changes(since=gen, generation=gen + 1, jobs=delta)
    return replace(snapshot, jobs=tuple(jobs), changes=changes), seq


def _check(got: Plan, want: Plan) -> None:
    """The benchmark's own check that both decided alike (the test suite checks all)."""
    same = (got.starts, got.preemptions, got.shrinks, got.grows, got.held) == (
        want.starts,
        want.preemptions,
        want.shrinks,
        want.grows,
        want.held,
    )
    if not same or len(got.pending_reasons) != len(want.pending_reasons):
        raise SystemExit("the plans differ: run tests/test_core_incremental.py")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (= --size quick)")
    ap.add_argument(
        "--size",
        choices=sorted(SIZES_BY_NAME),
        default=None,
        help="full (default): 10 to 1,000 nodes; quick: the two small ones; "
        "issue4: 1,250 nodes, 500 consumers, 50,000 pending; issue15: that and 2,500 "
        "nodes with 100,000 pending; all: full and issue15",
    )
    ap.add_argument("--repeats", type=int, default=0, help="runs per case (default: by size)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--cpu", action="store_true", help="time by this process's CPU time, not the wall clock"
    )
    ap.add_argument(
        "--profile", action="store_true", help="print a cProfile of the largest steady cycle"
    )
    args = ap.parse_args(argv)
    sizes = SIZES_BY_NAME[args.size or ("quick" if args.quick else "full")]
    global _clock
    _clock = time.process_time if args.cpu else time.perf_counter
    timed = "CPU time" if args.cpu else "wall clock"
    print(
        f"Python {platform.python_version()} on {platform.machine()}; seed {args.seed}; {timed}\n"
    )
    print(
        "| case | nodes | GPUs | consumers | running | pending | starts "
        "| before: ms per cycle | after: ms per cycle |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    last = None
    for size in sizes:
        capacity = size.nodes * GPUS_PER_NODE
        for case, fill in (("cold start", 0.0), ("steady state", 0.99), ("steady cycles", 0.99)):
            rng = random.Random(f"{args.seed}-{size}-{case.split()[0]}")
            policy = build_policy(rng, size, capacity)
            snapshot, running = build_snapshot(rng, size, policy, fill)
            repeats = args.repeats or (
                7 if size.pending <= 2_000 else 5 if size.pending <= 20_000 else 3
            )
            if case == "steady cycles":
                before, after, starts = time_cycles(rng, snapshot, policy, max(repeats, 5))
                shown = f"{starts:,.0f}"
                last = (rng, snapshot, policy)
            else:
                before, after, n = time_case(snapshot, policy, repeats)
                shown = f"{n:,}"
            consumers = f"{len(policy.consumers) - 1} ({size.parents} x {size.leaves_per_parent})"
            print(
                f"| {case} | {size.nodes:,} | {capacity:,} | {consumers} | {running:,} "
                f"| {size.pending:,} | {shown} | {before:,.0f} | {after:,.1f} |",
                flush=True,
            )
    if args.profile and last is not None:
        rng, snapshot, policy = last
        cache = DecideCache()
        plan = decide(snapshot, policy, NOW, cache)
        snapshot, _ = advance(rng, snapshot, plan, policy, max(j.submit_seq for j in snapshot.jobs))
        prof = cProfile.Profile()
        prof.enable()
        decide(snapshot, policy, NOW, cache)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats(
            os.environ.get("SORT", "tottime")
        ).print_stats(40)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
