"""Kueue's baseline scheduler performance scenario, replayed on the live daemon with
bench/nodesim.py as the nodes.

Kueue's generator (test/performance/scheduler/configs/baseline/generator.yaml in
kubernetes-sigs/kueue): 5 cohorts of 6 ClusterQueues, each with a nominal quota of 20
and a borrowing limit of 100, reclaimWithinCohort Any, preemption within a queue of lower
priority; each queue creates 350 small workloads (request 1, 200 ms, priority 50) one every
100 ms, 100 medium ones (5, 500 ms, priority 100) one every 500 ms and 50 large ones (20,
1 s, priority 200) one every 1.2 s: 15,000 workloads. Kueue's figures (rangespec.yaml, mean
of 5 runs): 351 s of wall time, and a usage of the queues of 58.7 % (the GPU-time they
used over the run, over their nominal quota times the run).

The mapping: a quota unit is a GPU, so 600 GPUs on 75 simulated nodes of 8; a cohort is
a parent consumer owning its queues' 120 with `limit: 120` (borrowing stays inside the
cohort, as a cohort without a parent); a ClusterQueue is a leaf owning 20 with `limit:
120` (its nominal quota plus its borrowing limit), `priority_preemption: true`; a
workload is a job with the class's GPUs, priority and run time (NODESIM_RUN_S, counted
from its start on the node). Submissions are made on each 100 ms tick, every queue's due
workloads in one SubmitJobs call. Wall time runs from the first submission to the last
job's end; usage is the simulator's integral of busy GPUs over that time, over 600 x it.

    .venv/bin/python bench/kueue_replay.py
"""

from __future__ import annotations

import argparse
import heapq
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _cluster import wait_for
from _nodesim_world import ProcStat, World

from schedulerd.client import job_spec

COHORTS, QUEUES, NOMINAL, BORROW = 5, 6, 20, 100
# (class, count, interval s, GPUs, run s, priority)
CLASSES = [
    ("small", 350, 0.1, 1, 0.2, 50),
    ("medium", 100, 0.5, 5, 0.5, 100),
    ("large", 50, 1.2, 20, 1.0, 200),
]
GPUS_PER_NODE = 8


def policy() -> str:
    lines = [
        "version: 1",
        "defaults: {grace: 0s, min_runtime: 0s, max_preemptions: null}",
        "consumers:",
    ]
    for c in range(COHORTS):
        lines.append(f"  cohort-{c}:")
        lines.append(f"    owned: {NOMINAL * QUEUES}")
        lines.append(f"    limit: {NOMINAL * QUEUES}")
        lines.append("    consumers:")
        for q in range(QUEUES):
            lines.append(
                f"      cq-{q}: {{owned: {NOMINAL}, limit: {NOMINAL + BORROW}, "
                "priority_preemption: true}"
            )
    return "\n".join(lines) + "\n"


def schedule(scale: float) -> list[tuple[float, str, str, int, float, int]]:
    """(time, queue, class, GPUs, run s, priority) of every workload, in time order."""
    out = []
    for c in range(COHORTS):
        for q in range(QUEUES):
            path = f"/cohort-{c}/cq-{q}"
            for name, count, every, gpus, run_s, prio in CLASSES:
                n = max(1, round(count * scale))
                out += [(i * every, path, name, gpus, run_s, prio) for i in range(n)]
    heapq.heapify(out)
    return [heapq.heappop(out) for _ in range(len(out))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the workloads")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    gpus = COHORTS * QUEUES * NOMINAL
    nodes = gpus // GPUS_PER_NODE
    root = Path(tempfile.mkdtemp(prefix="kueue-replay-"))
    world = World(root, policy())
    rows: list[tuple[str, str]] = []
    try:
        world.start_daemon()
        assert world.daemon is not None
        daemon = ProcStat(world.daemon.pid)
        world.start_sim(nodes, GPUS_PER_NODE)
        world.wait_registered(nodes)
        plan = schedule(args.scale)
        ids: list[int] = []
        cpu0 = daemon.cpu_s()
        g0 = float(world.status().get("gpu_seconds", 0.0))
        t0 = time.monotonic()
        i = 0
        while i < len(plan):
            now = time.monotonic() - t0
            batch = []
            while i < len(plan) and plan[i][0] <= now:
                _, path, name, n, run_s, prio = plan[i]
                env = {"NODESIM_RUN_S": str(run_s), "NODESIM_EXIT": "0"}
                batch.append(job_spec(path, ["x"], n, name=name, env=env, priority=prio))
                i += 1
            if batch:
                ids += [j.id for j in world.client.submit_many(batch)]
            if i < len(plan):
                time.sleep(max(0.0, t0 + plan[i][0] - time.monotonic()))
        submitted = time.monotonic() - t0

        def all_ended() -> bool:
            pending = sum(
                c.pending_jobs + c.running_jobs
                for c in world.client.consumers().consumers
                if c.leaf
            )
            return pending == 0

        wait_for("every workload to end", all_ended, 3600)
        wall = time.monotonic() - t0
        used = float(world.status().get("gpu_seconds", 0.0)) - g0
        cpu = daemon.cpu_s() - cpu0
        ended = world.client.list_jobs(states=["succeeded"])
        rows.append(("workloads", f"{len(plan)}"))
        rows.append(("succeeded", f"{len(ended)}"))
        rows.append(("submissions done after", f"{submitted:.1f} s"))
        rows.append(("wall time, first submission to last end (Kueue: 351 s)", f"{wall:.1f} s"))
        rows.append(
            (
                "usage: GPU-time used / (600 GPUs x wall) (Kueue: 58.7 %)",
                f"{100 * used / (gpus * wall):.1f} %",
            )
        )
        work = sum(n * run_s for _, _, _, n, run_s, _ in plan)
        rows.append(
            ("the workloads' own GPU-time / (600 x wall)", f"{100 * work / (gpus * wall):.1f} %")
        )
        rows.append(("daemon CPU over the run", f"{100 * cpu / wall:.0f} % of a core"))
        rows.append(
            ("nodesim: starts refused (GPU still held)", str(world.status().get("refused")))
        )
    finally:
        world.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nKueue's baseline scenario replayed, {nodes} nodes x 8 GPUs (bench/kueue_replay.py)\n")
    print("| measure | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
