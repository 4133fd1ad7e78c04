"""The index of live jobs by the nodes of their parts (daemon/partindex.py), which a
registration, a node's timeout and a forget read instead of every job: after every
kind of change it equals what a walk over every job finds, and a restarted daemon
rebuilds it from the store (a registration then still finds the parts it must judge)."""

from __future__ import annotations

from pathlib import Path

from schedulerd import core
from schedulerd.core import GpuSlot, JobId, NodeName
from schedulerd.daemon import nodes
from schedulerd.daemon.commands import StartPart
from schedulerd.daemon.nodes import PartReport
from schedulerd.daemon.partindex import PartsByNode
from schedulerd.daemon.plans import apply_plan
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, PartPhase, Store

POLICY = "version: 1\nconsumers:\n  a: {grace: 10s}\n"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(path: Path, clock: Clock) -> ClusterState:
    store = Store(path)
    state = ClusterState(store, clock)
    state.load()
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    return state


def _node(name: str) -> NodeRecord:
    return NodeRecord(name, "default", [GpuRecord(i, f"{name}-{i}", "f", 0) for i in range(2)])


def _start(state: ClusterState, slots: list[tuple[str, int]]) -> JobRecord:
    n = len(slots)
    job = state.submit(JobRecord(0, "/a", "u", "j", ["x"], {}, "", n, n, 0, JobState.PENDING, 0.0))
    start = core.Start(JobId(job.id), tuple(GpuSlot(NodeName(s), g) for s, g in slots), "t")
    apply_plan(state, core.Plan((start,), {}, {}))
    return job


def _walked(state: ClusterState) -> dict[str, set[int]]:
    """What a walk over every live job finds."""
    found: dict[str, set[int]] = {}
    for job in state.jobs.values():
        for part in job.parts:
            found.setdefault(part.node, set()).add(job.id)
    return found


def test_the_index_follows_every_change_and_is_rebuilt_at_load(tmp_path: Path) -> None:
    clock = Clock()
    state = _state(tmp_path / "s.db", clock)
    for name in ("n1", "n2", "n3"):
        nodes.register(state, _node(name), [])
    wide = _start(state, [("n1", 0), ("n2", 0), ("n3", 0)])
    lone = _start(state, [("n1", 1)])
    other = _start(state, [("n2", 1)])
    waiting = state.submit(
        JobRecord(0, "/a", "u", "w", ["x"], {}, "", 1, 1, 0, JobState.PENDING, 0.0)
    )
    assert state.parts_by_node.as_dict() == _walked(state)
    assert state.parts_by_node.jobs_on("n1") == [wide.id, lone.id]
    assert waiting.id not in {i for ids in _walked(state).values() for i in ids}
    # What the plan and the time limits read through it: the GPUs held on the nodes
    # a plan gives GPUs on, and the jobs that may be running (not the queue).
    assert state.held_slots({"n1", "n9"}) == {
        GpuSlot(NodeName("n1"), 0),
        GpuSlot(NodeName("n1"), 1),
    }
    assert state.held_slots({"n2"}) == {s for s in state.held_slots() if s.node == "n2"}
    assert [j.id for j in state.holding_jobs()] == [wide.id, lone.id, other.id]

    nodes.report(state, "n1", PartReport(lone.id, 0, "exited", 0))  # ends: dropped
    assert lone.id not in state.jobs
    assert state.parts_by_node.as_dict() == _walked(state)

    nodes.forget(state, "n3")  # the wide job's other parts are asked to stop
    assert state.parts_by_node.as_dict() == _walked(state)
    for name in ("n1", "n2"):  # they have: it is requeued, with no part anywhere
        nodes.report(state, name, PartReport(wide.id, 0, "exited", 143))
    assert state.jobs[wide.id].parts == []
    assert state.parts_by_node.as_dict() == _walked(state) == {"n2": {other.id}}

    nodes.report(state, "n2", PartReport(other.id, 0, "running", pid=5, gpu_indices=(1,)))
    # A restarted daemon rebuilds it: n2's agent comes back without its part, which
    # the registration finds through the index and requeues as lost.
    state.writer.close()
    clock.now += 1.0
    again = _state(tmp_path / "s.db", clock)
    assert again.parts_by_node.as_dict() == _walked(again) == {"n2": {other.id}}
    nodes.register(again, _node("n2"), [])
    assert again.jobs[other.id].state is JobState.PREEMPTED
    assert again.parts_by_node.as_dict() == _walked(again) == {}


def test_a_registration_redelivers_assigned_parts_found_through_the_index(
    tmp_path: Path,
) -> None:
    clock = Clock()
    state = _state(tmp_path / "s.db", clock)
    for name in ("n1", "n2"):
        nodes.register(state, _node(name), [])
    job = _start(state, [("n2", 0), ("n2", 1)])
    assert state.jobs[job.id].parts[0].phase is PartPhase.ASSIGNED
    out = nodes.register(state, _node("n2"), [])
    assert [(n, type(c)) for n, c in out] == [("n2", StartPart)]
    assert nodes.register(state, _node("n1"), []) == []


def test_put_moves_a_job_between_nodes_and_drops_it(tmp_path: Path) -> None:
    clock = Clock()
    state = _state(tmp_path / "s.db", clock)
    nodes.register(state, _node("n1"), [])
    job = _start(state, [("n1", 0)])
    index = PartsByNode()
    index.put(job)
    assert index.as_dict() == {"n1": {job.id}}
    job.parts[0].node = "n9"
    index.put(job)
    assert index.as_dict() == {"n9": {job.id}}
    index.put(job, held=False)
    assert index.as_dict() == {} and index.jobs_on("n9") == []
