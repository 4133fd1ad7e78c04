"""A hostile reviewer's tests of group commit (store/group.py, daemon/change.py): each
one an input that tried to break it, on a real SQLite file inside a real event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from schedulerd import core
from schedulerd.api.v1 import agent_pb2
from schedulerd.core import GpuSlot, JobId, NodeName
from schedulerd.daemon import nodes
from schedulerd.daemon.commands import StopPart
from schedulerd.daemon.links import AgentLinks
from schedulerd.daemon.nodes import PartReport
from schedulerd.daemon.plans import apply_plan
from schedulerd.daemon.services.agent_link import AgentLinkService
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, Store, StoreUnavailable

POLICY = "version: 1\nconsumers:\n  a: {grace: 10s}\n"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(tmp_path: Path, names: tuple[str, ...] = ("n1",)) -> ClusterState:
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, Clock())
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    for name in names:
        nodes.register(state, NodeRecord(name, "default", [GpuRecord(0, f"{name}u0", "f", 0)]), [])
    return state


def _job(name: str = "j", gpus: int = 1) -> JobRecord:
    return JobRecord(0, "/a", "u", name, ["x"], {}, "", gpus, gpus, 0, JobState.PENDING, 0.0)


def _memory(state: ClusterState) -> str:
    return repr(sorted((i, j.state, j.parts) for i, j in state.jobs.items()))


def _stored(state: ClusterState) -> str:
    jobs = state.store.load_jobs(active_only=True)
    return repr(sorted((j.id, j.state, j.parts) for j in jobs))


def test_a_write_that_raises_fails_its_batch_but_not_the_writer(tmp_path: Path) -> None:
    """A write raising something that is not a store error (a bug, a constraint) rolls
    its batch back (documented: docs/group-commit.md), answers every member with
    StoreUnavailable and applies none; the writer thread lives on and the next write
    commits and is applied."""
    state = _state(tmp_path)

    def poison(store: Store) -> None:
        raise ValueError("a constraint a member broke")

    async def scenario() -> list[object]:
        with state.writer._cond:  # every write below in one batch
            futures = [
                asyncio.ensure_future(state.submit_async(_job("before"))),
                state.writer.submit(poison, lambda: pytest.fail("applied a failed write")),
                asyncio.ensure_future(state.submit_async(_job("after"))),
            ]
            await asyncio.sleep(0)
        first = await asyncio.gather(*futures, return_exceptions=True)
        later = await state.submit_async(_job("later"))
        return [*first, later]

    results = asyncio.run(scenario())
    assert all(isinstance(r, StoreUnavailable) for r in results[:3])
    assert isinstance(results[3], JobRecord)
    assert [j.name for j in state.jobs.values()] == ["later"]
    assert _memory(state) == _stored(state)
    assert state.writer._thread is not None and state.writer._thread.is_alive()
    state.writer.close()


def test_close_writes_what_is_queued_and_answers_every_caller(tmp_path: Path) -> None:
    """Shutdown with writes queued: they are committed, applied and their callers
    answered (none left waiting forever); a write after close is refused."""
    state = _state(tmp_path)

    async def scenario() -> list[object]:
        with state.writer._cond:
            tasks = [asyncio.ensure_future(state.submit_async(_job(f"j{i}"))) for i in range(50)]
            await asyncio.sleep(0)
        state.writer.close()  # blocks until the thread wrote them all, then delivers
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        with pytest.raises(StoreUnavailable):
            await state.submit_async(_job("late"))
        return done

    results = asyncio.run(scenario())
    assert all(isinstance(r, JobRecord) for r in results)
    assert len(state.jobs) == 50
    assert _memory(state) == _stored(state)


def test_the_queue_bound_refuses_at_once_and_keeps_what_it_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_QUEUED the caller is refused at once (nothing queued, nothing counted);
    what was queued before commits."""
    from schedulerd.store import group

    monkeypatch.setattr(group, "MAX_QUEUED", 5)
    state = _state(tmp_path)

    async def scenario() -> tuple[list[object], int]:
        refused = 0
        with state.writer._cond:
            tasks = []
            for i in range(8):
                try:
                    tasks.append(state.writer.submit(lambda s, i=i: s.insert_job(_job(f"q{i}"))))
                except StoreUnavailable:
                    refused += 1
        return await asyncio.gather(*tasks, return_exceptions=True), refused

    results, refused = asyncio.run(scenario())
    assert refused == 3 and results == [None] * 5
    assert len(state.store.load_jobs()) == 5
    assert state.writer._changes == 0
    state.writer.close()


class _Loop:
    """The scheduling loop's one method the agent stream calls (wake)."""

    def wake(self) -> None:
        pass


def test_a_report_whose_stream_is_cancelled_still_sends_its_commands(tmp_path: Path) -> None:
    """A job on two nodes; its part on n1 fails and n1's agent hangs up while the
    report is being committed (the stream's reader task is cancelled: Connect's
    `finally`). The change commits and is applied (the job is stopping), so the stop
    owed to its part on n2 must go out: nothing else will send it while n2 stays
    connected (registration resends stops only to the node registering).
    Before the fix the reader's `send_all(out)` never ran: n2's part ran on."""
    state = _state(tmp_path, ("n1", "n2"))
    job = state.submit(_job("wide", gpus=2))
    slots = (GpuSlot(NodeName("n1"), 0), GpuSlot(NodeName("n2"), 0))
    apply_plan(state, core.Plan((core.Start(JobId(job.id), slots, "t"),), {}, {}))
    for n in ("n1", "n2"):
        nodes.report(state, n, PartReport(job.id, 0, "running", 5, gpu_indices=(0,)))
    links = AgentLinks()
    service = AgentLinkService(state, links, _Loop(), gate=None)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        q1, q2 = links.attach("n1"), links.attach("n2")
        gone = asyncio.Event()

        async def messages() -> AsyncIterator[agent_pb2.AgentMessage]:
            report = agent_pb2.JobReport(
                job_id=job.id, attempt=0, phase=agent_pb2.PHASE_EXITED, exit_code=3
            )
            yield agent_pb2.AgentMessage(report=report)
            await gone.wait()

        with state.writer._cond:  # the report is queued and cannot commit yet
            reader = asyncio.ensure_future(service._read("n1", messages(), q1))
            for _ in range(5):
                await asyncio.sleep(0)
            assert state.writer._changes == 1
            reader.cancel()  # n1 hung up
        await state.writer.changes_idle()
        for _ in range(5):
            await asyncio.sleep(0)
        sent = []
        while not q2.empty():
            sent.append(q2.get_nowait())
        return sent

    sent = asyncio.run(scenario())
    live = state.jobs[job.id]
    assert live.release_deadline is not None or live.state.ended  # the stop began
    assert any(isinstance(c, StopPart) and c.job_id == job.id for c in sent), sent
    state.writer.close()


def test_a_part_dropped_after_a_shrink_is_dropped_from_the_store_too(tmp_path: Path) -> None:
    """An elastic job on n1 and n2 shrinks off n2; n2's part exits with no GPU left and
    leaves the job's parts (endings.released). Memory then has one part; the store kept
    n2's row as it was (RUNNING, holding GPU 0, releasing it), so a daemon restart
    brought back a part that no longer exists, and the jobs-by-node index with it."""
    from schedulerd.core import Shrink
    from schedulerd.daemon.nodes import report

    state = _state(tmp_path, ("n1", "n2"))
    job = state.submit(JobRecord(0, "/a", "u", "e", ["t"], {}, "", 1, 2, 0, JobState.PENDING, 0.0))
    slots = (GpuSlot(NodeName("n1"), 0), GpuSlot(NodeName("n2"), 0))
    apply_plan(state, core.Plan((core.Start(JobId(job.id), slots, "t"),), {}, {}))
    for n in ("n1", "n2"):
        report(state, n, PartReport(job.id, 0, "running", 1, gpu_indices=(0,)))
    shrink = Shrink(JobId(job.id), (GpuSlot(NodeName("n2"), 0),), "reclaim")
    apply_plan(state, core.Plan((), {}, {}, shrinks=(shrink,)))
    report(state, "n2", PartReport(job.id, 0, "exited", 0, gpu_indices=()))
    assert [p.node for p in state.jobs[job.id].parts] == ["n1"]
    stored = state.store.load_job(job.id)
    assert stored is not None
    assert stored.parts == state.jobs[job.id].parts
    restarted = ClusterState(Store(tmp_path / "s.db"), Clock())
    restarted.load()
    assert restarted.parts_by_node.as_dict() == state.parts_by_node.as_dict() == {"n1": {job.id}}


def _check_memory_is_the_store(state: ClusterState, where: str) -> None:
    """What a restart would load equals memory, and the part index equals a rebuild."""
    mem = {i: (j.state, j.attempt, j.parts) for i, j in state.jobs.items()}
    disk = {j.id: (j.state, j.attempt, j.parts) for j in state.store.load_jobs(active_only=True)}
    assert mem == disk, where
    from schedulerd.daemon.partindex import PartsByNode

    rebuilt = PartsByNode()
    rebuilt.rebuild(state.jobs.values())
    assert state.parts_by_node.as_dict() == rebuilt.as_dict(), where


@pytest.mark.parametrize("seed", [*range(12), 202])  # 202: an older part rewritten
def test_random_lives_of_elastic_and_wide_jobs_keep_memory_equal_to_the_store(
    tmp_path: Path, seed: int
) -> None:
    """Submissions, real cycles (core.decide: starts, grows, shrinks, preemptions),
    agents' reports of every kind, cancels, nodes going down and registering again, a
    node forgotten: after each step, memory equals what a restart loads, and the part
    index equals a walk over the jobs (docs/store-writes.md: only what differs is
    written)."""
    import random

    from schedulerd import core as core_
    from schedulerd.daemon.nodes import expire_nodes, forget, register, report

    rng = random.Random(seed)
    clock = Clock()
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, clock)
    text = "version: 1\nconsumers:\n  a: {grace: 10s}\n  b: {grace: 10s}\n"
    state.set_policy(load_policy(text, "p"), store.save_policy(text, "p", 0.0))
    names = ["n1", "n2", "n3"]

    def node(name: str) -> NodeRecord:
        return NodeRecord(name, "default", [GpuRecord(i, f"{name}-{i}", "f", 0) for i in range(2)])

    for n in names:
        register(state, node(n), [])
    for step_no in range(150):
        clock.now += rng.choice([0.5, 2.0, 15.0])
        for n in state.nodes.values():
            n.last_seen = clock.now  # heartbeats, as the agent stream sets them
        op = rng.random()
        running = [j for j in state.jobs.values() if j.parts]
        if op < 0.2:
            lo = rng.randint(1, 2)
            hi = rng.choice([lo, rng.randint(lo, 6), 6])  # elastic ones, wide: reclaim shrinks
            consumer = rng.choice(["/a", "/b"])
            state.submit(
                JobRecord(0, consumer, "u", "j", ["x"], {}, "", lo, hi, 0, JobState.PENDING, 0.0)
            )
        elif op < 0.35 and running:  # a shrink, as reclaim would plan one: a GPU or a node
            job = rng.choice(running)
            part = rng.choice(job.parts)
            mine = [g for g in part.gpu_indices if g not in part.releasing]
            held = sum(len(p.gpu_indices) - len(p.releasing) for p in job.parts)
            take = mine[: rng.choice([1, len(mine)])]
            if job.gpus_max > job.gpus_min and take and held - len(take) >= job.gpus_min:
                slots = tuple(GpuSlot(NodeName(part.node), g) for g in take)
                shrink = core_.Shrink(JobId(job.id), slots, "reclaim")
                apply_plan(state, core_.Plan((), {}, {}, shrinks=(shrink,)))
        elif op < 0.42 and running:  # a grow onto a free GPU, as an idle cluster plans
            job = rng.choice(running)
            taken = {
                (p.node, g) for j in state.jobs.values() for p in j.parts for g in p.gpu_indices
            }
            free = [
                (n.name, g.index)
                for n in state.nodes.values()
                if not n.down
                for g in n.gpus
                if (n.name, g.index) not in taken and g.index not in n.fenced()
            ]
            held = sum(len(p.gpu_indices) for p in job.parts)
            if free and held < job.gpus_max and not job.parts[0].releasing:
                node_, gpu = rng.choice(free)
                grow = core_.Grow(JobId(job.id), (GpuSlot(NodeName(node_), gpu),), "idle")
                apply_plan(state, core_.Plan((), {}, {}, grows=(grow,)))
        elif op < 0.5:
            assert state.policy is not None
            plan = core_.decide(state.snapshot(), state.policy, clock.now)
            apply_plan(state, plan)
        elif op < 0.8 and running:
            releasing = [(j, p) for j in running for p in j.parts if p.releasing]
            if releasing and rng.random() < 0.7:  # the shrinks' ends, most of the time
                job, part = rng.choice(releasing)
            else:
                job = rng.choice(running)
                part = rng.choice(job.parts)
            phase = rng.choice(["running", "running", "exited", "lost"])
            alive = [g for g in part.gpu_indices if g not in part.releasing]
            if phase == "running" and part.releasing and rng.random() < 0.7:
                gpus = tuple(alive)  # released workers left
            else:
                gpus = tuple(part.gpu_indices)
            r = PartReport(
                job.id,
                job.attempt,
                phase,
                rng.choice([0, 1, 143]),
                gpu_indices=gpus if phase == "running" else (),
            )
            report(state, part.node, r)
        elif op < 0.87 and state.jobs:
            job = rng.choice(list(state.jobs.values()))
            state.cancel(job.id, "u")
        elif op < 0.95:
            victim = rng.choice(names)
            state.nodes[victim].last_seen = clock.now - 1000
            expire_nodes(state, 100.0)
            reports = [
                PartReport(j.id, j.attempt, "running", gpu_indices=tuple(p.gpu_indices))
                for j in state.jobs.values()
                for p in j.parts
                if p.node == victim and rng.random() < 0.5
            ]
            register(state, node(victim), reports)
        else:
            victim = rng.choice(names)
            if victim in state.nodes:
                forget(state, victim)
                register(state, node(victim), [])
        _check_memory_is_the_store(state, f"seed {seed}, step {step_no}")
    restarted = ClusterState(Store(tmp_path / "s.db"), Clock())
    restarted.load()
    assert restarted.parts_by_node.as_dict() == state.parts_by_node.as_dict()


def _regrown(tmp_path: Path) -> tuple[ClusterState, JobRecord]:
    """An elastic job on n1 and n2; n2 goes silent, its part is lost (EXITED) while the
    job goes on; n2 comes back and the job grows onto it again: a new part on n2, of the
    same attempt, beside the lost one (plans.py: a grow onto a node whose part exited)."""
    from schedulerd.core import Grow
    from schedulerd.daemon.nodes import expire_nodes, register, report

    clock = Clock()
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, clock)
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))

    def node(name: str) -> NodeRecord:
        return NodeRecord(name, "default", [GpuRecord(i, f"{name}-{i}", "f", 0) for i in range(2)])

    for n in ("n1", "n2"):
        register(state, node(n), [])
    job = state.submit(JobRecord(0, "/a", "u", "e", ["t"], {}, "", 1, 3, 0, JobState.PENDING, 0.0))
    slots = (GpuSlot(NodeName("n1"), 0), GpuSlot(NodeName("n2"), 0))
    apply_plan(state, core.Plan((core.Start(JobId(job.id), slots, "t"),), {}, {}))
    for n in ("n1", "n2"):
        report(state, n, PartReport(job.id, 0, "running", gpu_indices=(0,)))
    clock.now += 200
    state.nodes["n1"].last_seen = clock.now
    expire_nodes(state, 100.0)
    register(state, node("n2"), [])
    assert state.jobs[job.id].state is JobState.RUNNING
    grow = Grow(JobId(job.id), (GpuSlot(NodeName("n2"), 1),), "idle")
    apply_plan(state, core.Plan((), {}, {}, grows=(grow,)))
    report(state, "n2", PartReport(job.id, 0, "running", gpu_indices=(1,)))
    on_n2 = [p for p in state.jobs[job.id].parts if p.node == "n2"]
    assert [p.phase.value for p in on_n2] == ["exited", "running"]
    return state, job


def test_a_change_after_a_regrow_keeps_the_live_part_stored(tmp_path: Path) -> None:
    """job_write compared each part with the live part of the same (attempt, node): with
    two such parts (the lost one and the new one) the lost one always looked changed and
    was written over the running one's row by any later change of the job (here: a
    cancel). A restart then read the running part as EXITED, and the agent's report of it
    as a part the daemon does not know: fenced and stopped."""
    state, job = _regrown(tmp_path)
    state.cancel(job.id, "u")
    stored = state.store.load_job(job.id)
    assert stored is not None
    # Both of n2's parts are stored, each as it is: the lost one EXITED, the live one
    # running (its row never written over by the lost one's).
    assert [p.phase.value for p in stored.parts if p.node == "n2"] == ["exited", "running"]


def test_a_lost_part_and_its_regrown_successor_both_survive_a_restart(tmp_path: Path) -> None:
    state, job = _regrown(tmp_path)
    stored = state.store.load_job(job.id)
    assert stored is not None
    assert stored.parts == state.jobs[job.id].parts
