"""Group commit (store/group.py), driven on a real SQLite file inside a real event loop:
concurrent submissions, an agent's report and a plan share transactions; a batch that
fails to commit acknowledges none of its members and leaves memory and store as they
were; a batch that commits leaves memory equal to what the store rebuilds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from schedulerd import core
from schedulerd.core import GpuSlot, JobId, NodeName
from schedulerd.daemon import nodes
from schedulerd.daemon.nodes import PartReport
from schedulerd.daemon.plans import apply_plan, apply_plan_async
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, Store, StoreUnavailable

POLICY = "version: 1\nconsumers:\n  a: {grace: 10s}\n"
T = TypeVar("T")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _node() -> NodeRecord:
    return NodeRecord("n1", "default", [GpuRecord(i, f"u{i}", "f", 0) for i in range(1)])


def _job(name: str = "j") -> JobRecord:
    return JobRecord(0, "/a", "u", name, ["x"], {}, "", 1, 1, 0, JobState.PENDING, 0.0)


def _setup(tmp_path: Path) -> tuple[ClusterState, JobRecord, JobRecord]:
    """One node of one GPU; a job running on it (reported running) and one waiting."""
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, Clock())
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    nodes.register(state, _node(), [])
    running = state.submit(_job("running"))
    start = core.Start(JobId(running.id), (GpuSlot(NodeName("n1"), 0),), "t")
    apply_plan(state, core.Plan((start,), {}, {}))
    nodes.report(state, "n1", PartReport(running.id, 0, "running", 5, gpu_indices=(0,)))
    waiting = state.submit(_job("waiting"))
    return state, running, waiting


def _memory(state: ClusterState) -> str:
    return repr(sorted(state.jobs.items())) + repr(sorted(state.nodes.items()))


def _store(state: ClusterState) -> str:
    jobs = state.store.load_jobs()
    return repr([(j.id, j.state, j.parts) for j in jobs]) + repr(
        [(n.name, n.drained, n.fences) for n in state.store.load_nodes()]
    )


async def _together(state: ClusterState, calls: list[Callable[[], Awaitable[T]]]) -> list[object]:
    """Start every call while the writer cannot take any write, then let it: the writes
    the calls queue before they first wait go in one batch (deterministically)."""
    with state.writer._cond:  # the writer's thread takes writes only under it
        tasks = [asyncio.ensure_future(call()) for call in calls]
        await asyncio.sleep(0)  # each task runs to its first wait: its write is queued
    return await asyncio.gather(*tasks, return_exceptions=True)


def _exit(state: ClusterState, job: JobRecord) -> Callable[[], Awaitable[object]]:
    return lambda: nodes.report_async(state, "n1", PartReport(job.id, 0, "exited", 0))


def _submit(state: ClusterState, i: int) -> Callable[[], Awaitable[object]]:
    return lambda: state.submit_async(_job(f"s{i}"))


def test_a_batch_that_fails_to_commit_acknowledges_none_and_changes_nothing(
    tmp_path: Path,
) -> None:
    state, running, _ = _setup(tmp_path)
    failpoint = tmp_path / "fail"
    state.writer.fail_when = failpoint
    before_memory, before_store = _memory(state), _store(state)

    async def go() -> list[object]:
        failpoint.touch()
        calls = [_submit(state, i) for i in range(10)]
        calls.insert(5, _exit(state, running))  # a report among the submissions
        return await _together(state, calls)

    results = asyncio.run(go())
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert state.writer.largest_batch == 11  # they were one transaction
    assert _memory(state) == before_memory
    assert _store(state) == before_store
    assert state.writer.settle() is None and not state.writer._changes  # nothing pending

    # The disk is back: the same calls go through, all of them, and memory follows.
    failpoint.unlink()

    async def again() -> list[object]:
        calls = [_submit(state, i) for i in range(10)]
        calls.insert(5, _exit(state, running))
        return await _together(state, calls)

    results = asyncio.run(again())
    submitted = [r for r in results if isinstance(r, JobRecord)]
    assert len(submitted) == 10 and all(j.id in state.jobs for j in submitted)
    assert running.id not in state.jobs  # its exit was applied
    assert state.store.load_job(running.id).state is JobState.SUCCEEDED  # type: ignore[union-attr]


def test_a_failed_batch_leaves_later_independent_writes_to_commit(tmp_path: Path) -> None:
    """A batch fails whole; submissions queued behind it (pure inserts, built on
    nothing it changes) go in the next batch once the disk is back."""
    state, _, _ = _setup(tmp_path)
    failpoint = tmp_path / "fail"
    state.writer.fail_when = failpoint

    async def go() -> tuple[list[object], list[object]]:
        failpoint.touch()
        first = await _together(state, [_submit(state, i) for i in range(4)])
        failpoint.unlink()
        second = await _together(state, [_submit(state, i) for i in range(4)])
        return first, second

    first, second = asyncio.run(go())
    assert all(isinstance(r, StoreUnavailable) for r in first)
    assert all(isinstance(r, JobRecord) and r.id in state.jobs for r in second)
    stored = {j.name for j in state.store.load_jobs()}
    assert stored == {"running", "waiting", "s0", "s1", "s2", "s3"}


def test_report_submissions_and_plan_sharing_batches_stay_consistent(tmp_path: Path) -> None:
    """The job on the one GPU exits (a report) while submissions come in and the loop
    commits a plan that starts the waiting job on that GPU. The plan is built only
    after the report is applied (one change pending at a time), so it finds the GPU
    free; every write lands, and memory is what the store rebuilds."""
    state, running, waiting = _setup(tmp_path)
    start = core.Start(JobId(waiting.id), (GpuSlot(NodeName("n1"), 0),), "t")

    async def go() -> list[object]:
        calls: list[Callable[[], Awaitable[object]]] = [_submit(state, i) for i in range(6)]
        calls.insert(2, _exit(state, running))
        calls.insert(4, lambda: apply_plan_async(state, core.Plan((start,), {}, {})))
        calls += [_submit(state, i) for i in range(6, 9)]
        return await _together(state, calls)

    results = asyncio.run(go())
    assert not [r for r in results if isinstance(r, BaseException)], results
    started, commands = results[4]  # type: ignore[misc]
    assert [j.id for j in started] == [waiting.id], "the plan was built before the exit"
    assert commands and commands[0][0] == "n1"
    assert state.writer.largest_batch > 2  # the report shared its transaction
    assert state.jobs[waiting.id].state is JobState.RUNNING
    assert running.id not in state.jobs
    # Memory is exactly what the store rebuilds.
    fresh = ClusterState(state.store, state.clock)
    fresh.load()
    assert sorted(fresh.jobs) == sorted(state.jobs)
    for job_id, job in fresh.jobs.items():
        live = state.jobs[job_id]
        assert (job.state, job.parts, job.attempt) == (live.state, live.parts, live.attempt)
    assert [(n.name, n.fences, n.epoch) for n in fresh.nodes.values()] == [
        (n.name, n.fences, n.epoch) for n in state.nodes.values()
    ]


def test_a_synchronous_change_applies_a_pending_one_first(tmp_path: Path) -> None:
    """A change built with the event loop's own commit (a cancel) while a report is
    still in the writer's queue settles it first: it never reads the record the
    report is about to replace."""
    state, running, _ = _setup(tmp_path)

    async def go() -> None:
        with state.writer._cond:
            task = asyncio.ensure_future(_exit(state, running)())
            await asyncio.sleep(0)  # the report's write is queued, not taken
        # The report ended the job; the cancel must see that, not the running job.
        job, out = state.cancel(running.id, "u")
        assert job.state is JobState.SUCCEEDED and out == []
        await task

    asyncio.run(go())
    assert state.store.load_job(running.id).state is JobState.SUCCEEDED  # type: ignore[union-attr]


def test_a_change_whose_caller_went_away_is_applied_and_holds_no_one_back(
    tmp_path: Path,
) -> None:
    """The report's caller is cancelled while its write waits (an agent's stream that
    closed): the write still commits and is applied, and the plan queued after it
    (which waits for no change to be pending) is not held back for good."""
    state, running, waiting = _setup(tmp_path)
    start = core.Start(JobId(waiting.id), (GpuSlot(NodeName("n1"), 0),), "t")

    async def go() -> tuple[list[JobRecord], object]:
        with state.writer._cond:
            report = asyncio.ensure_future(_exit(state, running)())
            await asyncio.sleep(0)  # queued
            report.cancel()
            await asyncio.sleep(0)  # the caller is gone; its write is not
        plan = apply_plan_async(state, core.Plan((start,), {}, {}))
        # A guard against a hang, not a timing: the plan needs the report delivered.
        return await asyncio.wait_for(plan, 60)

    started, _ = asyncio.run(go())
    assert running.id not in state.jobs  # the exit was applied all the same
    assert [j.id for j in started] == [waiting.id]  # and the plan was built on it


def test_a_closed_writer_refuses_new_writes(tmp_path: Path) -> None:
    state, _, _ = _setup(tmp_path)

    async def go() -> None:
        await state.submit_async(_job("before"))
        state.writer.close()
        with pytest.raises(StoreUnavailable):
            await state.submit_async(_job("after"))

    asyncio.run(go())
    assert {j.name for j in state.store.load_jobs()} >= {"before"}


def test_changes_take_turns_first_come_first_served_one_woken_at_a_time(tmp_path: Path) -> None:
    """Hundreds of callers waiting to build a change (500 nodes reporting): each gets its
    turn in the order it came, one change is pending at a time, and a delivered change
    wakes one waiter, not all of them. A waiter cancelled, woken or not, and one that
    queues no change, pass the turn on."""
    from schedulerd.store.group import GroupWriter

    store = Store(tmp_path / "s.db")
    writer = GroupWriter(store)
    order: list[int] = []
    futures = 0  # made on the loop: waking every waiter for each change makes O(n^2)
    pending = most = 0

    async def one(i: int) -> None:
        nonlocal pending, most
        await writer.changes_idle()
        order.append(i)
        if i % 50 == 7:
            return  # this one writes nothing after all
        pending += 1
        most = max(most, pending)

        def applied() -> None:
            nonlocal pending
            pending -= 1

        await writer.submit(lambda store: None, applied, change=True)

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        make = loop.create_future

        def counted() -> asyncio.Future[None]:
            nonlocal futures
            futures += 1
            return make()

        loop.create_future = counted  # type: ignore[method-assign]
        tasks = [asyncio.create_task(one(i)) for i in range(300)]
        await asyncio.sleep(0)  # all queued behind the first one's change
        tasks[100].cancel()  # waiting: never served
        await asyncio.wait_for(asyncio.gather(*tasks[:100]), 30)
        # One woken, then cancelled before it runs: the turn goes on.
        while writer._turn is None:
            await asyncio.sleep(0)
        nxt = min(i for i in range(300) if i not in order and not tasks[i].done())
        tasks[nxt].cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        return [i for i, t in enumerate(tasks) if t.cancelled()]

    try:
        cancelled = asyncio.run(scenario())
    finally:
        writer.close()
        store.close()
    assert len(cancelled) == 2 and cancelled[0] == 100
    assert order == [i for i in range(300) if i not in cancelled]
    assert most == 1
    assert futures < 4 * 300
