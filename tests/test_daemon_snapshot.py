"""The daemon's snapshot is kept from cycle to cycle (ClusterState._job_views: a job's
view is built again only when the job changed, as every committed change and submission
says through `notify`). Driven on a real SQLite store through the daemon's own paths
(submissions, plans from the real core, agents' reports, preemptions, shrinks, cancels,
a restart's load), the kept snapshot must equal one built from scratch at every step,
and the cycle's plan must equal the one decided without any cache."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from schedulerd import core
from schedulerd.daemon.nodes import PartReport, register, report
from schedulerd.daemon.plans import apply_plan
from schedulerd.daemon.state import ClusterState, _core_job
from schedulerd.daemon.status import summary
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, PartPhase, Store

POLICY = """version: 1
consumers:
  a: {owned: 4, grace: 10s}
  b: {owned: 4, grace: 10s, priority_preemption: true}
  c: {share: 2}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(path: Path, clock: Clock) -> ClusterState:
    store = Store(path)
    state = ClusterState(store, clock)
    policy = load_policy(POLICY, "p.yaml")
    state.set_policy(policy, store.save_policy(POLICY, "p.yaml", 0.0))
    return state


def _node(name: str) -> NodeRecord:
    return NodeRecord(name, "default", [GpuRecord(i, f"{name}-{i}", "fake", 0) for i in range(4)])


def _fresh(state: ClusterState) -> tuple[core.Job, ...]:
    return tuple(_core_job(j) for j in state.jobs.values())


def _held(views: Iterable[core.Job]) -> dict[tuple[str, str], float]:
    held: dict[tuple[str, str], float] = defaultdict(float)
    for v in views:
        held[(v.consumer, v.user)] += len(v.held)
    return held


def _check_changes(before: core.Snapshot | None, after: core.Snapshot) -> bool:
    """`after.changes`, if any, say what changed since `before` (core.Changes): each job
    said is the job now (None: gone), every other job is the same value, in the same
    relative order, with new jobs after them. Whether there were changes."""
    ch = after.changes
    if before is None or ch is None:
        return False
    if before.changes is not None:
        assert ch.since == before.changes.generation
    assert ch.generation == ch.since + 1
    then = {j.id: j for j in before.jobs}
    now = {j.id: j for j in after.jobs}
    for job_id, job in ch.jobs.items():
        assert now.get(job_id) is job
    assert all(then[j.id] is j for j in after.jobs if j.id not in ch.jobs)
    kept = [j.id for j in before.jobs if j.id in now]
    assert [j.id for j in after.jobs][: len(kept)] == kept
    return True


class Seen:
    """The snapshots taken one after the other, each checked against the one before."""

    def __init__(self) -> None:
        self.last: core.Snapshot | None = None
        self.with_changes = 0

    def snapshot(self, state: ClusterState) -> core.Snapshot:
        snapshot = state.snapshot()
        self.with_changes += _check_changes(self.last, snapshot)
        self.last = snapshot
        return snapshot


def _summary_counted_one_by_one(state: ClusterState) -> str:
    """systemd's STATUS line, every job and part looked at (the daemon counts faster)."""
    up = [n for n in state.nodes.values() if state.schedulable(n)]
    busy = sum(len(p.gpu_indices) for j in state.jobs.values() for p in j.parts)
    waiting = sum(1 for j in state.jobs.values() if j.state.waiting)
    running = sum(1 for j in state.jobs.values() if j.state is JobState.RUNNING)
    return (
        f"{len(up)} of {len(state.nodes)} nodes schedulable, {busy} of "
        f"{sum(len(n.gpus) for n in up)} GPUs busy, {waiting} jobs waiting, {running} running"
    )


def _cycle(state: ClusterState, cache: core.DecideCache, seen: Seen) -> None:
    assert summary(state) == _summary_counted_one_by_one(state)
    snapshot = seen.snapshot(state)
    assert snapshot.jobs == _fresh(state)
    # Usage accrues from the running jobs' kept views: the GPUs the records hold.
    running = {v.id: v for v in _fresh(state) if v.phase is core.JobPhase.RUNNING}
    assert state._running == running
    assert {k: v for k, v in state._held_now().items() if v} == {
        k: v for k, v in _held(running.values()).items() if v
    }
    assert state.policy is not None
    plan = core.decide(snapshot, state.policy, state.clock(), cache)
    bare = core.decide(snapshot, state.policy, state.clock())
    assert (plan.starts, plan.preemptions, plan.shrinks, plan.grows, plan.held) == (
        bare.starts,
        bare.preemptions,
        bare.shrinks,
        bare.grows,
        bare.held,
    )
    apply_plan(state, plan)


def test_the_kept_snapshot_is_the_snapshot_built_from_scratch(tmp_path: Path) -> None:
    rng = random.Random(3)
    clock = Clock()
    state = _state(tmp_path / "s.db", clock)
    cache = core.DecideCache()
    seen = Seen()
    for name in ("n1", "n2", "n3"):
        register(state, _node(name), [])
    for step in range(40):
        clock.now += 5
        for node in state.nodes.values():
            node.last_seen = clock.now
        # Submissions, elastic ones among them.
        for _ in range(rng.randint(0, 3)):
            gpus = rng.choice([1, 1, 2, 4])
            state.submit(
                JobRecord(
                    0,
                    rng.choice(["/a", "/b", "/c"]),
                    "u",
                    f"j{step}",
                    ["x"],
                    {},
                    "",
                    gpus,
                    gpus + rng.choice([0, 0, 2]),
                    rng.choice([0, 5]),
                    JobState.PENDING,
                    0.0,
                )
            )
        _cycle(state, cache, seen)
        # Agents say what runs, what exited, what released.
        for job in list(state.jobs.values()):
            if job.state is not JobState.RUNNING:
                continue
            for part in list(job.parts):
                live = state.jobs.get(job.id)
                if live is None or part.phase is PartPhase.EXITED:
                    continue
                kept = tuple(i for i in part.gpu_indices if i not in part.releasing)
                if job.preempting or job.cancel_requested or rng.random() < 0.1:
                    r = PartReport(job.id, job.attempt, "exited", exit_code=0)
                else:
                    r = PartReport(job.id, job.attempt, "running", pid=1, gpu_indices=kept)
                report(state, part.node, r)
        # Cancels of waiting and running jobs.
        for job in list(state.jobs.values()):
            if rng.random() < 0.05:
                state.cancel(job.id, "u")
        if step % 2:  # a snapshot between cycles (an admin's): the next cycle's
            # changes are then not from the snapshot its cache saw last
            assert seen.snapshot(state).jobs == _fresh(state)
    assert seen.with_changes > 40
    # A restart: jobs loaded without a change; the snapshot has them all, and no changes.
    again = _state(tmp_path / "s.db", clock)
    again.load()
    snapshot = again.snapshot()
    assert snapshot.jobs == _fresh(again)
    assert snapshot.changes is None
