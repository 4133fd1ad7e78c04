"""The daemon's state changes on a real SQLite store (WAL, synchronous=FULL), driven in
one process as the daemon drives them, without gRPC or agents (issue 15):

- a wide job: one part on each of N nodes started, each part reported running, then
  each reported exited: the part rows written (SQLite's own count, total_changes) and
  the time;
- a restart: M nodes of 8 GPUs full of running one-GPU jobs; a new ClusterState loads
  the store and every node registers again with its parts: the time of the M
  registrations.

    .venv/bin/python bench/store_bench.py                    # 250-part job; 500 nodes, 4,000 jobs
    .venv/bin/python bench/store_bench.py --wide 100 --nodes 100

Run it against another checkout with PYTHONPATH pointing there (it uses only the
daemon's public functions). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from schedulerd import core
from schedulerd.core import GpuSlot, JobId, NodeName
from schedulerd.daemon import nodes
from schedulerd.daemon.nodes import PartReport
from schedulerd.daemon.plans import apply_plan
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, Store

POLICY = "version: 1\nconsumers:\n  a: {grace: 10s}\n"


class Clock:
    """Frozen: registering hundreds of nodes takes longer than a heartbeat's silence,
    and a plan would find the first ones unreachable."""

    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(path: Path) -> ClusterState:
    store = Store(path)
    state = ClusterState(store, Clock())
    state.load()
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    return state


def _node(name: str, gpus: int) -> NodeRecord:
    return NodeRecord(name, "default", [GpuRecord(i, f"{name}-{i}", "f", 0) for i in range(gpus)])


def _job(gpus: int) -> JobRecord:
    return JobRecord(0, "/a", "u", "j", ["x"], {}, "", gpus, gpus, 0, JobState.PENDING, 0.0)


def wide(root: Path, width: int) -> tuple[int, float, float]:
    """(part rows written, s to report every part running, s to report every exit)"""
    state = _state(root / "wide.db")
    names = [f"n{i:04d}" for i in range(width)]
    for name in names:
        nodes.register(state, _node(name, 1), [])
    job = state.submit(_job(width))
    start = core.Start(JobId(job.id), tuple(GpuSlot(NodeName(n), 0) for n in names), "t")
    apply_plan(state, core.Plan((start,), {}, {}))
    conn = state.store.db.conn
    before = conn.total_changes
    began = time.perf_counter()
    for i, name in enumerate(names):
        nodes.report(state, name, PartReport(job.id, 0, "running", pid=i + 1, gpu_indices=(0,)))
    ran = time.perf_counter() - began
    began = time.perf_counter()
    for name in names:
        nodes.report(state, name, PartReport(job.id, 0, "exited", 0))
    ended = time.perf_counter() - began
    # Rows changed in all (parts, job, events): the events are one per report at most.
    rows = conn.total_changes - before
    state.store.close()
    return rows, ran, ended


def restart(root: Path, count: int, per_node: int) -> tuple[int, float]:
    """(jobs running, s for every node to register again after a restart)"""
    path = root / "restart.db"
    state = _state(path)
    names = [f"n{i:04d}" for i in range(count)]
    for name in names:
        nodes.register(state, _node(name, per_node), [])
    jobs = [state.submit(_job(1)) for _ in range(count * per_node)]
    starts = tuple(
        core.Start(JobId(j.id), (GpuSlot(NodeName(names[k // per_node]), k % per_node),), "t")
        for k, j in enumerate(jobs)
    )
    apply_plan(state, core.Plan(starts, {}, {}))
    reports = {name: [] for name in names}  # type: dict[str, list[PartReport]]
    for k, j in enumerate(jobs):
        gpu = k % per_node
        reports[names[k // per_node]].append(
            PartReport(j.id, 0, "running", pid=k + 1, gpu_indices=(gpu,))
        )
    for name in names:  # they confirm their parts: all running
        nodes.register(state, _node(name, per_node), reports[name])
    state.writer.close()
    state.store.close()

    again = _state(path)  # the daemon restarted
    began = time.perf_counter()
    for name in names:
        nodes.register(again, _node(name, per_node), reports[name])
    took = time.perf_counter() - began
    running = sum(1 for j in again.jobs.values() if j.state is JobState.RUNNING)
    again.store.close()
    return running, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wide", type=int, default=250, help="parts of the wide job")
    parser.add_argument("--nodes", type=int, default=500, help="nodes at the restart")
    parser.add_argument("--per-node", type=int, default=8, help="GPUs (jobs) per node")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        rows, ran, ended = wide(Path(tmp), args.wide)
        running, took = restart(Path(tmp), args.nodes, args.per_node)
    print("| case | rows written | s |")
    print("| --- | ---: | ---: |")
    print(f"| {args.wide}-part job: each part reported running | | {ran:.2f} |")
    print(f"| {args.wide}-part job: each part reported exited | | {ended:.2f} |")
    print(f"| {args.wide}-part job: both, rows changed (parts, job, events) | {rows:,} | |")
    print(
        f"| restart: {args.nodes} nodes register again, {running:,} jobs running | | {took:.2f} |"
    )


if __name__ == "__main__":
    main()
