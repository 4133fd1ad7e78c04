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
