"""The daemon's handling of agent facts, driven directly on a real SQLite store:
what registration repeats, how shrinks complete, how preemptions requeue."""

from __future__ import annotations

from pathlib import Path

from schedulerd import core
from schedulerd.core import ConsumerPath, GpuSlot, JobId, NodeName
from schedulerd.daemon.commands import AckPart, ResizePart, StartPart, StopPart
from schedulerd.daemon.nodes import PartReport, register, report
from schedulerd.daemon.plans import apply_plan
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, Store

POLICY = "version: 1\nconsumers:\n  a: {grace: 10s}\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(tmp: Path) -> ClusterState:
    store = Store(tmp / "s.db")
    state = ClusterState(store, Clock())
    policy = load_policy(POLICY, "p.yaml")
    state.set_policy(policy, store.save_policy(POLICY, "p.yaml", 0.0))
    return state


def _node(name: str = "n1", gpus: int = 4) -> NodeRecord:
    return NodeRecord(
        name, "default", [GpuRecord(i, f"{name}-{i}", "fake", 0) for i in range(gpus)]
    )


def _running_elastic(state: ClusterState) -> JobRecord:
    register(state, _node(), [])
    job = state.submit(
        JobRecord(0, "/a", "u", "e", ["train"], {}, "", 1, 4, 0, JobState.PENDING, 0.0)
    )
    slots = tuple(GpuSlot(NodeName("n1"), i) for i in range(3))
    plan = core.Plan(
        starts=(core.Start(JobId(job.id), slots, "test"),), pending_reasons={}, consumers={}
    )
    started, _ = apply_plan(state, plan)
    assert started == [job]
    report(state, "n1", PartReport(job.id, 0, "running", pid=1, gpu_indices=(0, 1, 2)))
    return job


def test_elastic_start_assigns_worker_ids_and_a_store_address(tmp_path: Path) -> None:
    state = _state(tmp_path)
    job = _running_elastic(state)
    assert job.parts[0].workers == {0: 0, 1: 1, 2: 2}
    assert job.store_address.startswith("127.0.0.1:")


def test_a_release_completes_when_the_agent_reports_the_worker_gone(tmp_path: Path) -> None:
    state = _state(tmp_path)
    job = _running_elastic(state)
    shrink = core.Shrink(JobId(job.id), (GpuSlot(NodeName("n1"), 2),), "reclaim for /b")
    _, out = apply_plan(state, core.Plan((), {}, {}, shrinks=(shrink,)))
    assert out == [("n1", ResizePart(job.id, 0, (2,), 10.0, (), "reclaim for /b"))]
    assert job.parts[0].releasing == [2]
    report(state, "n1", PartReport(job.id, 0, "running", pid=1, gpu_indices=(0, 1)))
    assert job.parts[0].gpu_indices == [0, 1] and job.parts[0].releasing == []
    kinds = [e.kind for e in state.store.events(job.id)]
    assert kinds[-2:] == ["shrink-requested", "shrunk"]


def test_registration_repeats_a_lost_release_and_a_lost_grow(tmp_path: Path) -> None:
    state = _state(tmp_path)
    job = _running_elastic(state)
    shrink = core.Shrink(JobId(job.id), (GpuSlot(NodeName("n1"), 2),), "reclaim")
    grow = core.Grow(JobId(job.id), (GpuSlot(NodeName("n1"), 3),), "idle")
    apply_plan(state, core.Plan((), {}, {}, shrinks=(shrink,)))
    apply_plan(state, core.Plan((), {}, {}, grows=(grow,)))
    # The agent got neither command: all three first workers live, no joiner.
    out = register(state, _node(), [PartReport(job.id, 0, "running", 1, gpu_indices=(0, 1, 2))])
    resizes = [c for _, c in out if isinstance(c, ResizePart)]
    assert len(resizes) == 1
    assert resizes[0].release == (2,) and resizes[0].add == ((3, 3),)


def test_registration_delivers_a_committed_start_the_agent_never_got(tmp_path: Path) -> None:
    state = _state(tmp_path)
    register(state, _node(), [])
    job = state.submit(JobRecord(0, "/a", "u", "r", ["x"], {}, "", 1, 1, 0, JobState.PENDING, 0))
    apply_plan(
        state, core.Plan((core.Start(JobId(job.id), (GpuSlot(NodeName("n1"), 0),), "t"),), {}, {})
    )
    out = register(state, _node(), [])
    assert [type(c) for _, c in out] == [StartPart]


def test_a_preempted_job_goes_back_to_the_queue_as_a_new_attempt(tmp_path: Path) -> None:
    state = _state(tmp_path)
    job = _running_elastic(state)
    apply_plan(state, core.Plan((), {}, {}, preemptions=(core.Preempt(JobId(job.id), "why"),)))
    assert job.preempting and job.release_deadline == 1010.0
    out = report(state, "n1", PartReport(job.id, 0, "exited", exit_code=143))
    assert ("n1", AckPart(job.id, 0)) in out
    assert job.state is JobState.PREEMPTED and job.attempt == 1 and job.parts == []
    again = state.store.load_job(job.id)
    assert again is not None and again.state is JobState.PREEMPTED and again.attempt == 1
    snapshot_job = next(j for j in state.snapshot().jobs if j.id == job.id)
    assert snapshot_job.phase is core.JobPhase.PENDING  # it waits like any pending job
    assert snapshot_job.consumer == ConsumerPath("/a")


def test_a_stopping_job_on_many_nodes_is_not_sent_its_stops_again_at_each_part_end(
    tmp_path: Path,
) -> None:
    # Its stops went out when the stop began: the end of each part must not send a stop
    # to every part still alive again (N²/2 stops for a job on N nodes), while a part
    # that fails first still stops the others.
    state = _state(tmp_path)
    names = [f"n{i}" for i in range(4)]
    for name in names:
        register(state, _node(name, 1), [])

    def start_on_all() -> JobRecord:
        job = state.submit(
            JobRecord(0, "/a", "u", "r", ["x"], {}, "", 4, 4, 0, JobState.PENDING, 0.0)
        )
        slots = tuple(GpuSlot(NodeName(n), 0) for n in names)
        apply_plan(state, core.Plan((core.Start(JobId(job.id), slots, "t"),), {}, {}))
        for name in names:
            report(state, name, PartReport(job.id, 0, "running", pid=1, gpu_indices=(0,)))
        return job

    job = start_on_all()
    _, out = state.cancel(job.id, "u")
    assert sorted(n for n, c in out if isinstance(c, StopPart)) == names
    for name in names:
        out = report(state, name, PartReport(job.id, 0, "exited", exit_code=-15))
        assert out == [(name, AckPart(job.id, 0))]
    ended = state.store.load_job(job.id)
    assert ended is not None and ended.state is JobState.CANCELLED

    job = start_on_all()
    out = report(state, "n0", PartReport(job.id, 0, "exited", exit_code=3))
    assert sorted(n for n, c in out if isinstance(c, StopPart)) == names[1:]
    out = report(state, "n1", PartReport(job.id, 0, "exited", exit_code=-15))
    assert out == [("n1", AckPart(job.id, 0))]
