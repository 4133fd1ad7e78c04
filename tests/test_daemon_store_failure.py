"""Check, commit, then apply: when the store cannot be written, every state change
raises StoreUnavailable and leaves memory exactly as it was, and equal to the store.

The store is made read-only with `PRAGMA query_only` (a real SQLite refusal to write,
as a full disk gives); tests/test_e2e_store_full.py does it with a full tmpfs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from schedulerd import core
from schedulerd.core import GpuSlot, JobId, NodeName
from schedulerd.daemon import nodes
from schedulerd.daemon.nodes import PartReport
from schedulerd.daemon.plans import apply_plan
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, Store, StoreUnavailable

POLICY = "version: 1\nconsumers:\n  a: {grace: 10s}\n"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _node() -> NodeRecord:
    return NodeRecord("n1", "default", [GpuRecord(i, f"u{i}", "f", 0) for i in range(4)])


def _job() -> JobRecord:
    return JobRecord(0, "/a", "u", "j", ["x"], {}, "", 1, 1, 0, JobState.PENDING, 0.0)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ClusterState, JobRecord, JobRecord]:
    clock = Clock()
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, clock)
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    nodes.register(state, _node(), [])
    running = state.submit(_job())
    start = core.Start(JobId(running.id), (GpuSlot(NodeName("n1"), 0),), "t")
    apply_plan(state, core.Plan((start,), {}, {}))
    nodes.report(state, "n1", PartReport(running.id, 0, "running", 5, gpu_indices=(0,)))
    waiting = state.submit(_job())
    return state, running, waiting


def _memory(state: ClusterState) -> str:
    return repr(sorted(state.jobs.items())) + repr(sorted(state.nodes.items()))


def _store(state: ClusterState) -> str:
    jobs = {j.id: j for j in state.store.load_jobs(active_only=True)}
    return repr(sorted(jobs)) + repr(
        [(n.name, n.drained, n.fences) for n in state.store.load_nodes()]
    )


CHANGES: dict[str, Callable[[ClusterState, JobRecord, JobRecord], object]] = {
    "cancel running": lambda s, r, w: s.cancel(r.id, "u"),
    "cancel waiting": lambda s, r, w: s.cancel(w.id, "u"),
    "submit": lambda s, r, w: s.submit(_job()),
    "submit many": lambda s, r, w: s.submit_many([_job(), _job()]),
    "plan start": lambda s, r, w: apply_plan(
        s, core.Plan((core.Start(JobId(w.id), (GpuSlot(NodeName("n1"), 1),), "t"),), {}, {})
    ),
    "plan preempt": lambda s, r, w: apply_plan(
        s, core.Plan((), {}, {}, preemptions=(core.Preempt(JobId(r.id), "x"),))
    ),
    "report exit": lambda s, r, w: nodes.report(s, "n1", PartReport(r.id, 0, "exited", 0)),
    "register": lambda s, r, w: nodes.register(s, _node(), []),
    "node timeout": lambda s, r, w: nodes.expire_nodes(s, 0.0),
    "forget": lambda s, r, w: nodes.forget(s, "n1"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_failed_write_changes_nothing(
    setup: tuple[ClusterState, JobRecord, JobRecord], change: str
) -> None:
    state, running, waiting = setup
    before_memory, before_store = _memory(state), _store(state)
    state.store.db.conn.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreUnavailable):
        CHANGES[change](state, running, waiting)
    assert _memory(state) == before_memory
    assert _store(state) == before_store
    state.store.db.conn.execute("PRAGMA query_only = OFF")
    CHANGES[change](state, running, waiting)  # the same change goes through once it can
    assert _memory(state) != before_memory
