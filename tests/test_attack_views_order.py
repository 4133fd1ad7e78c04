"""A hostile reviewer's tests of the kept snapshot (daemon/state.py `_job_views`: the
jobs tuple is one copy of views kept in the order of `jobs`), of the queues extended
rather than sorted again (core/queues.py), and of where the loop decides
(daemon/loop.py `_cheap`), driven through the daemon's async paths on a real store in
a real event loop: submissions sharing batches (some failing), arrays, reports, plans
decided by the scheduling loop itself, cancels, node loss, policy changes, a restart.
At every cycle the snapshot must equal one built from scratch, and the loop's plan
(decided with its cache, on the loop or in a thread) the plan decided without any."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable
from pathlib import Path

import pytest

from schedulerd import core
from schedulerd.daemon import nodes
from schedulerd.daemon.links import AgentLinks
from schedulerd.daemon.loop import SchedulingLoop
from schedulerd.daemon.nodes import PartReport
from schedulerd.daemon.state import ClusterState, _core_job
from schedulerd.daemon.status import summary
from schedulerd.policy import load_policy
from schedulerd.store import (
    GpuRecord,
    JobRecord,
    JobState,
    NodeRecord,
    PartPhase,
    Store,
    StoreUnavailable,
)
from schedulerd.store.records import ARRAY_FIRST

POLICIES = [
    """version: 1
consumers:
  a: {owned: 4, grace: 10s, order: priority}
  b: {owned: 4, grace: 10s, priority_preemption: true, order: fifo}
  c: {share: 2}
""",
    """version: 1
consumers:
  a: {owned: 2, grace: 10s, order: fifo}
  b: {owned: 6, grace: 10s, order: priority}
  c: {share: 1, order: priority}
""",
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(path: Path, clock: Clock, policy: int = 0) -> ClusterState:
    store = Store(path)
    state = ClusterState(store, clock)
    _set_policy(state, policy)
    state.writer.fail_when = path.with_name("fail")
    return state


def _set_policy(state: ClusterState, which: int) -> None:
    text = POLICIES[which]
    state.set_policy(load_policy(text, "p.yaml"), state.store.save_policy(text, "p.yaml", 0.0))


def _node(name: str) -> NodeRecord:
    return NodeRecord(name, "default", [GpuRecord(i, f"{name}-{i}", "fake", 0) for i in range(4)])


def _job(rng: random.Random, name: str) -> JobRecord:
    gpus = rng.choice([1, 1, 2, 4])
    return JobRecord(
        0,
        rng.choice(["/a", "/b", "/c"]),
        rng.choice(["u", "v"]),
        name,
        ["x"],
        {},
        "",
        gpus,
        gpus + rng.choice([0, 0, 2]),
        rng.choice([0, 0, 5, 9]),  # higher priorities come later: before queued jobs
        JobState.PENDING,
        0.0,
        time_limit_s=rng.choice([None, None, 600.0]),
    )


def _fresh(state: ClusterState) -> tuple[core.Job, ...]:
    return tuple(_core_job(j) for j in state.jobs.values())


class Checked:
    """core.decide as the loop calls it, checked: the snapshot is the one built from
    scratch, and the plan the one decided without a cache. Counts where it ran."""

    def __init__(self, state: ClusterState, real: object) -> None:
        self.state = state
        self.real = real
        self.where: list[str] = []

    def __call__(self, snapshot, policy, now, cache=None):  # type: ignore[no-untyped-def]
        on_loop = threading.current_thread() is threading.main_thread()
        self.where.append("loop" if on_loop else "thread")
        if on_loop:  # in a thread, the loop may change `jobs` meanwhile
            assert snapshot.jobs == _fresh(self.state)
        plan = self.real(snapshot, policy, now, cache)  # type: ignore[operator]
        bare = self.real(snapshot, policy, now)  # type: ignore[operator]
        assert (plan.starts, plan.preemptions, plan.shrinks, plan.grows, plan.held) == (
            bare.starts,
            bare.preemptions,
            bare.shrinks,
            bare.grows,
            bare.held,
        )
        assert dict(plan.pending_reasons) == dict(bare.pending_reasons)  # the reasons, too
        return plan


async def _agents_report(state: ClusterState, rng: random.Random) -> None:
    """Every part of every running job reported, several nodes at once (each report
    waits for its turn to build its change)."""
    calls: list[Awaitable[object]] = []
    for job in list(state.jobs.values()):
        if job.state is not JobState.RUNNING:
            continue
        for part in job.parts:
            if part.phase is PartPhase.EXITED or part.attempt != job.attempt:
                continue
            kept = tuple(i for i in part.gpu_indices if i not in part.releasing)
            if job.preempting or job.cancel_requested or rng.random() < 0.15:
                r = PartReport(job.id, job.attempt, "exited", exit_code=0)
            else:
                r = PartReport(job.id, job.attempt, "running", pid=1, gpu_indices=kept)
            calls.append(nodes.report_async(state, part.node, r))
    rng.shuffle(calls)
    await asyncio.gather(*calls, return_exceptions=True)


async def _submit_storm(state: ClusterState, rng: random.Random, step: int) -> None:
    """Unary submissions sharing batches; one batch in a few fails (the failpoint)."""
    failpoint = state.writer.fail_when
    assert failpoint is not None
    fail = rng.random() < 0.2
    with state.writer._cond:
        calls = [
            asyncio.ensure_future(state.submit_async(_job(rng, f"s{step}.{i}")))
            for i in range(rng.randint(0, 6))
        ]
        await asyncio.sleep(0)
        if fail:
            failpoint.touch()
    results = await asyncio.gather(*calls, return_exceptions=True)
    if fail:
        failpoint.unlink()
        assert all(isinstance(r, StoreUnavailable) for r in results)


def _one_step(state: ClusterState, rng: random.Random, step: int, clock: Clock) -> None:
    """The synchronous facts: arrays, lone submissions, cancels, nodes lost and back."""
    if rng.random() < 0.3:
        n = rng.randint(2, 5)
        first = _job(rng, f"arr{step}")
        elements = []
        for i in range(n):
            e = _job(rng, f"arr{step}")
            e.consumer, e.gpus_min, e.gpus_max = first.consumer, first.gpus_min, first.gpus_max
            e.array_id, e.array_index = ARRAY_FIRST, i
            elements.append(e)
        state.submit_many(elements)
    if rng.random() < 0.3:
        state.submit(_job(rng, f"lone{step}"))
    for job in list(state.jobs.values()):
        if rng.random() < 0.05:
            state.cancel(job.id, "u")
    arrays = {j.array_id for j in state.jobs.values() if j.array_id}
    if arrays and rng.random() < 0.2:
        array = rng.choice(sorted(arrays))
        state.cancel_many([j.id for j in state.jobs.values() if j.array_id == array], "u")
    for node in state.nodes.values():
        if not node.down:
            node.last_seen = clock.now
    if rng.random() < 0.1:  # a node goes silent: lost at the next cycle
        name = rng.choice(sorted(state.nodes))
        state.nodes[name].last_seen = clock.now - 1000
    for name, node in list(state.nodes.items()):
        if node.down and rng.random() < 0.5:
            nodes.register(state, _node(name), [])


@pytest.mark.parametrize("seed", range(6))
def test_the_loops_snapshots_and_plans_through_the_async_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    clock = Clock()
    path = tmp_path / "s.db"
    state = _state(path, clock)
    checked = Checked(state, core.decide)
    monkeypatch.setattr(core, "decide", checked)

    async def live(state: ClusterState, steps: int, policy: int) -> None:
        loop = SchedulingLoop(state, AgentLinks(), node_timeout_s=60.0)
        for step in range(steps):
            clock.now += 5
            _one_step(state, rng, step, clock)
            await _submit_storm(state, rng, step)
            if rng.random() < 0.1:  # a new policy between two cycles
                policy = 1 - policy
                _set_policy(state, policy)
            await loop.cycle()
            assert state.snapshot().jobs == _fresh(state)
            await _agents_report(state, rng)
            assert state.snapshot().jobs == _fresh(state)
            assert summary(state) == _summary_one_by_one(state)

    try:
        for name in ("n1", "n2", "n3"):
            nodes.register(state, _node(name), [])
        asyncio.run(live(state, 40, 0))
    finally:
        state.writer.close()
        state.store.close()
    # A restart: loaded without changes, then more of the same on the new state.
    again = _state(path, clock, 0)
    again.load()
    checked.state = again
    try:
        assert again.snapshot().jobs == _fresh(again)
        for name in ("n1", "n2", "n3"):
            nodes.register(again, _node(name), [])
        asyncio.run(live(again, 15, 0))
    finally:
        again.writer.close()
        again.store.close()
    assert "loop" in checked.where and "thread" in checked.where


def _summary_one_by_one(state: ClusterState) -> str:
    up = [n for n in state.nodes.values() if state.schedulable(n)]
    busy = sum(len(p.gpu_indices) for j in state.jobs.values() for p in j.parts)
    waiting = sum(1 for j in state.jobs.values() if j.state.waiting)
    running = sum(1 for j in state.jobs.values() if j.state is JobState.RUNNING)
    return (
        f"{len(up)} of {len(state.nodes)} nodes schedulable, {busy} of "
        f"{sum(len(n.gpus) for n in up)} GPUs busy, {waiting} jobs waiting, {running} running"
    )
