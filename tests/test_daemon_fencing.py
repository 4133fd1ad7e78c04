"""No GPU held twice, on the daemon's side (docs/fencing.md), driven directly on a real
SQLite store with an injected clock: liveness from heartbeats, DOWN nodes and their
fences, unknown parts, requeues that are not the job's fault, node epochs, forgetting
a node, the end of an elastic job, and the one must-stop rule on reconnection."""

from __future__ import annotations

from pathlib import Path

from schedulerd import core
from schedulerd.core import GpuSlot, JobId, NodeName
from schedulerd.daemon.commands import AckPart, StopPart
from schedulerd.daemon.nodes import PartReport, disconnect, expire_nodes, forget, register, report
from schedulerd.daemon.plans import apply_plan
from schedulerd.daemon.state import ClusterState, Liveness
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, Store

POLICY = "version: 1\nconsumers:\n  a: {grace: 10s}\n"
HEARTBEAT_S = 2.0
TIMEOUT_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(tmp: Path) -> tuple[ClusterState, Clock]:
    clock = Clock()
    store = Store(tmp / "s.db")
    state = ClusterState(store, clock, HEARTBEAT_S)
    state.set_policy(load_policy(POLICY, "p.yaml"), store.save_policy(POLICY, "p.yaml", 0.0))
    return state, clock


def _node(name: str = "n1", gpus: int = 4) -> NodeRecord:
    return NodeRecord(name, "default", [GpuRecord(i, f"{name}-{i}", "f", 0) for i in range(gpus)])


def _start(
    state: ClusterState, gpus: tuple[int, ...], node: str = "n1", gmax: int = 0
) -> JobRecord:
    n = len(gpus)
    job = state.submit(
        JobRecord(0, "/a", "u", "j", ["x"], {}, "", n, gmax or n, 0, JobState.PENDING, 0.0)
    )
    slots = tuple(GpuSlot(NodeName(node), i) for i in gpus)
    started, _ = apply_plan(state, core.Plan((core.Start(JobId(job.id), slots, "t"),), {}, {}))
    assert started == [job]
    report(state, node, PartReport(job.id, 0, "running", pid=7, gpu_indices=gpus))
    return job


def _free(state: ClusterState, node: str = "n1") -> tuple[int, ...]:
    snap = next(n for n in state.snapshot().nodes if n.name == node)
    held = {s.index for s in state.held_slots() if s.node == node}
    return tuple(i for i in snap.gpus if i not in held)


def test_silence_makes_a_node_unreachable_then_down(tmp_path: Path) -> None:
    state, clock = _state(tmp_path)
    register(state, _node(), [])
    node = state.nodes["n1"]
    assert state.liveness(node) is Liveness.UP and state.schedulable(node)
    clock.now += 2.4 * HEARTBEAT_S  # still within 2.5 intervals
    assert state.liveness(node) is Liveness.UP
    clock.now += 0.2 * HEARTBEAT_S  # the stream is open, but heartbeats stopped
    assert state.liveness(node) is Liveness.UNREACHABLE and not state.schedulable(node)
    assert expire_nodes(state, TIMEOUT_S) == ([], [])
    clock.now = node.last_seen + TIMEOUT_S
    down, _ = expire_nodes(state, TIMEOUT_S)
    assert down == ["n1"] and state.liveness(node) is Liveness.DOWN
    assert state.store.load_nodes()[0].down


def test_a_down_node_requeues_its_jobs_as_lost_and_fences_their_gpus(tmp_path: Path) -> None:
    state, clock = _state(tmp_path)
    register(state, _node(), [])
    job = _start(state, (0, 1))
    disconnect(state, "n1")
    clock.now += TIMEOUT_S
    expire_nodes(state, TIMEOUT_S)
    assert job.state is JobState.PREEMPTED and job.attempt == 1  # lost, not FAILED
    assert [e.kind for e in state.store.events(job.id)][-1] == "lost"
    stored = state.store.load_nodes()[0]
    assert {(f.gpu_index, f.job_id, f.attempt) for f in stored.fences} == {
        (0, job.id, 0),
        (1, job.id, 0),
    }
    # The node comes back with the old attempt still running: it is stopped at once,
    # and its GPUs stay fenced until it is reported gone.
    old = PartReport(job.id, 0, "running", pid=7, gpu_indices=(0, 1))
    out = register(state, _node(), [old])
    why = f"job {job.id} attempt 0 is not known to the daemon"
    assert ("n1", StopPart(job.id, 0, 0.0, why)) in out
    assert _free(state) == (2, 3)
    snap = next(n for n in state.snapshot().nodes if n.name == "n1")
    assert snap.gpus == (2, 3)  # the core is not offered fenced GPUs
    out = report(state, "n1", PartReport(job.id, 0, "exited", exit_code=-9))
    assert ("n1", AckPart(job.id, 0)) in out
    assert _free(state) == (0, 1, 2, 3)
    assert state.store.load_nodes()[0].fences == []


def test_a_fence_lifts_when_the_agent_registers_without_the_part(tmp_path: Path) -> None:
    state, clock = _state(tmp_path)
    register(state, _node(), [])
    _start(state, (2,))
    disconnect(state, "n1")
    clock.now += TIMEOUT_S
    expire_nodes(state, TIMEOUT_S)
    assert _free(state) == (0, 1, 3) or not state.schedulable(state.nodes["n1"])
    register(state, _node(), [])  # the agent vouches: it runs nothing of it
    assert _free(state) == (0, 1, 2, 3)


def test_an_unknown_running_part_is_stopped_and_fenced(tmp_path: Path) -> None:
    state, _ = _state(tmp_path)
    stray = PartReport(99, 3, "running", pid=5, gpu_indices=(1,))
    out = register(state, _node(), [stray])
    assert [type(c) for _, c in out] == [StopPart]
    assert 1 not in _free(state)
    report(state, "n1", PartReport(99, 3, "exited", exit_code=-9))
    assert 1 in _free(state)


def test_parts_ended_by_the_node_requeue_their_job(tmp_path: Path) -> None:
    state, _ = _state(tmp_path)
    register(state, _node(), [])
    for phase, stopped_by_node, kind in [
        ("lost", False, "lost"),
        ("refused", False, "refused"),
        ("exited", True, "node-stopped"),
    ]:
        job = _start(state, (0,))
        report(state, "n1", PartReport(job.id, 0, phase, -15, stopped_by_node=stopped_by_node))
        assert job.state is JobState.PREEMPTED, phase
        assert state.store.events(job.id)[-1].kind == kind
        state.cancel(job.id, "u")  # make room for the next case
    job = _start(state, (0,))
    report(state, "n1", PartReport(job.id, 0, "exited", exit_code=3))
    assert job.state is JobState.FAILED  # the job's own failure stays a failure


def test_each_register_commits_a_new_epoch(tmp_path: Path) -> None:
    state, _ = _state(tmp_path)
    register(state, _node(), [])
    register(state, _node(), [])
    assert state.nodes["n1"].epoch == 2
    assert state.store.load_nodes()[0].epoch == 2


def test_a_preemption_stop_lost_with_the_stream_is_sent_again(tmp_path: Path) -> None:
    state, clock = _state(tmp_path)
    register(state, _node(), [])
    job = _start(state, (0, 1))
    apply_plan(state, core.Plan((), {}, {}, preemptions=(core.Preempt(JobId(job.id), "why"),)))
    clock.now += 4.0
    out = register(state, _node(), [PartReport(job.id, 0, "running", 7, gpu_indices=(0, 1))])
    stops = [c for _, c in out if isinstance(c, StopPart)]
    assert stops == [StopPart(job.id, 0, 6.0, "why")]  # what is left of the grace


def test_forgetting_a_node_requeues_its_jobs_and_frees_its_gpus(tmp_path: Path) -> None:
    state, _ = _state(tmp_path)
    register(state, _node(), [])
    job = _start(state, (0, 1, 2))
    disconnect(state, "n1")
    requeued, released, _ = forget(state, "n1")
    assert requeued == [job.id] and released == 3
    assert job.state is JobState.PREEMPTED
    assert "n1" not in state.nodes and state.store.load_nodes() == []


def test_an_elastic_job_whose_worker_0_left_is_never_grown(tmp_path: Path) -> None:
    state, _ = _state(tmp_path)
    register(state, _node(), [])
    job = _start(state, (0, 1), gmax=4)
    report(state, "n1", PartReport(job.id, 0, "running", 7, gpu_indices=(1,)))  # worker 0 left
    assert job.ending
    grow = core.Grow(JobId(job.id), (GpuSlot(NodeName("n1"), 2),), "idle")
    _, out = apply_plan(state, core.Plan((), {}, {}, grows=(grow,)))
    assert out == [] and len(job.parts[0].gpu_indices) == 2
    view = next(j for j in state.snapshot().jobs if j.id == job.id)
    assert view.stopping  # the core does not grow it either


def test_a_part_marked_lost_that_comes_back_running_is_stopped(tmp_path: Path) -> None:
    """Its node went down while the job's part on another node still stopped (same
    attempt): the returning agent's part is stopped at once, and its report of the end
    only lifts the fence (review finding: it was never stopped)."""
    state, clock = _state(tmp_path)
    register(state, _node("m1", 1), [])
    register(state, _node("m2", 1), [])
    job = state.submit(JobRecord(0, "/a", "u", "j", ["x"], {}, "", 2, 2, 0, JobState.PENDING, 0.0))
    slots = (GpuSlot(NodeName("m1"), 0), GpuSlot(NodeName("m2"), 0))
    apply_plan(state, core.Plan((core.Start(JobId(job.id), slots, "t"),), {}, {}))
    for n in ("m1", "m2"):
        report(state, n, PartReport(job.id, 0, "running", pid=7, gpu_indices=(0,)))
    disconnect(state, "m1")
    clock.now += TIMEOUT_S
    state.nodes["m2"].last_seen = clock.now
    expire_nodes(state, TIMEOUT_S)
    assert job.preempting and job.attempt == 0  # m2's part still has its grace
    out = register(state, _node("m1", 1), [PartReport(job.id, 0, "running", 7, gpu_indices=(0,))])
    assert [c for _, c in out if isinstance(c, StopPart) and c.grace_s == 0.0]
    assert _free(state, "m1") == ()
    assert state.nodes["m1"].fences
    report(state, "m1", PartReport(job.id, 0, "exited", exit_code=-9))
    assert state.nodes["m1"].fences == []
    assert job.state is JobState.RUNNING and job.preempting  # still waiting for m2's part
    report(state, "m2", PartReport(job.id, 0, "exited", exit_code=-15))
    assert job.state is JobState.PREEMPTED and job.attempt == 1
    assert _free(state, "m1") == (0,) and _free(state, "m2") == (0,)
