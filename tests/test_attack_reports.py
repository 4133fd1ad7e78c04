"""A hostile reviewer's tests of agents' reports recorded together (daemon/reports.py:
ReportBatcher): each one an input that tried to break it, on a real SQLite file inside a
real event loop. The rule checked throughout: recording reports in one change leaves
memory, store and the commands sent as recording them one after another would; a failure
changes nothing and tells every caller; no caller waits forever; a GPU is never free
while a part that held it may still run."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from pathlib import Path

import pytest

from schedulerd import core
from schedulerd.core import GpuSlot, JobId, NodeName
from schedulerd.daemon import nodes, reports
from schedulerd.daemon.commands import AckPart, Outbox, StopPart
from schedulerd.daemon.nodes import PartReport
from schedulerd.daemon.plans import apply_plan, apply_plan_async
from schedulerd.daemon.reports import ReportBatcher
from schedulerd.daemon.state import ClusterState
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

POLICY = "version: 1\nconsumers:\n  a: {grace: 10s}\n  b: {grace: 10s}\n"
NAMES = ("n1", "n2", "n3")
# A guard against a hang, not a timing.
HANG_S = 20.0


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _node(name: str, gpus: int = 2) -> NodeRecord:
    return NodeRecord(name, "default", [GpuRecord(i, f"{name}-{i}", "f", 0) for i in range(gpus)])


def _job(name: str, lo: int, hi: int, consumer: str = "/a") -> JobRecord:
    return JobRecord(0, consumer, "u", name, ["x"], {}, "", lo, hi, 0, JobState.PENDING, 0.0)


def _state(path: Path, names: tuple[str, ...] = NAMES, gpus: int = 2) -> ClusterState:
    path.mkdir(parents=True, exist_ok=True)
    store = Store(path / "s.db")
    state = ClusterState(store, Clock())
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    for name in names:
        nodes.register(state, _node(name, gpus), [])
    return state


def _same_ports(text: str) -> str:
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)


def _memory(state: ClusterState) -> str:
    return _same_ports(
        repr(sorted(state.jobs.items()))
        + repr(sorted(state.nodes.items()))
        + repr(sorted(state.parts_by_node.as_dict().items()))
    )


def _stored(state: ClusterState) -> str:
    jobs = sorted(state.store.load_jobs(), key=lambda j: j.id)
    nodes_ = sorted(state.store.load_nodes(), key=lambda n: n.name)
    return _same_ports(repr(jobs) + repr(nodes_))


def _events(state: ClusterState) -> list[tuple[int, str, str]]:
    rows = state.store.db.execute("SELECT job_id, kind, message FROM events ORDER BY id")
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def _together(
    batcher: ReportBatcher, batch: list[tuple[str, PartReport]]
) -> list[BaseException | None]:
    tasks = [asyncio.ensure_future(batcher.record(node, r)) for node, r in batch]
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG_S)


def _start(state: ClusterState, job: JobRecord, *slots: tuple[str, int]) -> None:
    gpus = tuple(GpuSlot(NodeName(n), i) for n, i in slots)
    apply_plan(state, core.Plan((core.Start(JobId(job.id), gpus, "t"),), {}, {}))


# -- a random life, then a random batch, both ways ------------------------------------


def _life(path: Path, seed: int) -> tuple[ClusterState, list[tuple[str, PartReport]]]:
    """A cluster driven through a random life (real cycles, shrinks under way, grows,
    preemptions, cancels, nodes gone down and back, regrown parts), then a batch of
    reports drawn from the same seed: every kind of phase for live, lost, released and
    old parts, repeated reports for one part, stale attempts and unknown jobs."""
    rng = random.Random(seed)
    clock = Clock()
    path.mkdir(parents=True, exist_ok=True)
    store = Store(path / "s.db")
    state = ClusterState(store, clock)
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    for n in NAMES:
        nodes.register(state, _node(n), [])
    for _ in range(rng.randint(5, 40)):
        clock.now += rng.choice([0.5, 2.0, 15.0])
        for n in state.nodes.values():
            n.last_seen = clock.now
        op = rng.random()
        running = sorted((j for j in state.jobs.values() if j.parts), key=lambda j: j.id)
        if op < 0.25:
            lo = rng.randint(1, 2)
            hi = rng.choice([lo, rng.randint(lo, 5), 5])
            state.submit(_job("j", lo, hi, rng.choice(["/a", "/b"])))
        elif op < 0.45:
            assert state.policy is not None
            apply_plan(state, core.decide(state.snapshot(), state.policy, clock.now))
        elif op < 0.55 and running:  # a shrink under way
            job = rng.choice(running)
            part = rng.choice(job.parts)
            mine = [g for g in part.gpu_indices if g not in part.releasing]
            held = sum(len(p.gpu_indices) - len(p.releasing) for p in job.parts)
            take = mine[: rng.choice([1, len(mine)])]
            if job.gpus_max > job.gpus_min and take and held - len(take) >= job.gpus_min:
                slots = tuple(GpuSlot(NodeName(part.node), g) for g in take)
                shrink = core.Shrink(JobId(job.id), slots, "reclaim")
                apply_plan(state, core.Plan((), {}, {}, shrinks=(shrink,)))
        elif op < 0.52 and running:  # a grow onto a free GPU (a regrown part, maybe)
            job = rng.choice(running)
            taken = {
                (p.node, g) for j in state.jobs.values() for p in j.parts for g in p.gpu_indices
            }
            free = [
                (n.name, g.index)
                for n in sorted(state.nodes.values(), key=lambda n: n.name)
                if not n.down
                for g in n.gpus
                if (n.name, g.index) not in taken and g.index not in n.fenced()
            ]
            held = sum(len(p.gpu_indices) for p in job.parts)
            if free and held < job.gpus_max and not any(p.releasing for p in job.parts):
                node_, gpu = rng.choice(free)
                grow = core.Grow(JobId(job.id), (GpuSlot(NodeName(node_), gpu),), "idle")
                apply_plan(state, core.Plan((), {}, {}, grows=(grow,)))
        elif op < 0.6 and running:
            job = rng.choice(running)
            preempt = core.Preempt(JobId(job.id), "reclaim")
            apply_plan(state, core.Plan((), {}, {}, preemptions=(preempt,)))
        elif op < 0.8 and running:
            job = rng.choice(running)
            part = rng.choice(job.parts)
            phase = rng.choice(["running", "running", "exited", "lost"])
            alive = tuple(g for g in part.gpu_indices if g not in part.releasing)
            r = PartReport(job.id, job.attempt, phase, rng.choice([0, 1]), gpu_indices=alive)
            nodes.report(state, part.node, r)
        elif op < 0.87 and state.jobs:
            state.cancel(rng.choice(sorted(state.jobs)), "u")
        else:
            victim = rng.choice(NAMES)
            state.nodes[victim].last_seen = clock.now - 1000
            nodes.expire_nodes(state, 100.0)
            if rng.random() < 0.5:
                listed = [
                    PartReport(j.id, j.attempt, "running", gpu_indices=tuple(p.gpu_indices))
                    for j in sorted(state.jobs.values(), key=lambda j: j.id)
                    for p in j.parts
                    if p.node == victim and rng.random() < 0.5
                ]
                nodes.register(state, _node(victim), listed)
    for _ in range(3):
        state.submit(_job("late", 1, rng.choice([1, 2, 3])))
    assert state.policy is not None
    apply_plan(state, core.decide(state.snapshot(), state.policy, clock.now))
    batch: list[tuple[str, PartReport]] = []
    for job in sorted(state.jobs.values(), key=lambda j: j.id):
        for part in job.parts:
            for _ in range(rng.choice([0, 1, 1, 2, 3, 4])):
                phase = rng.choice(["running", "running", "exited", "lost", "refused"])
                gpus = list(part.gpu_indices)
                if rng.random() < 0.5:  # released workers gone, or one more
                    gpus = [g for g in gpus if g not in part.releasing or rng.random() < 0.3]
                attempt = job.attempt if rng.random() < 0.85 else max(0, job.attempt - 1)
                r = PartReport(
                    job.id,
                    attempt,
                    phase,
                    rng.choice([0, 0, 1, 143]),
                    rng.randint(1, 99),
                    "",
                    tuple(gpus),
                    stopped_by_node=rng.random() < 0.15,
                )
                batch.append((part.node, r))
    for _ in range(rng.randint(0, 4)):
        node = rng.choice(NAMES)
        job_id = rng.choice([9999, *sorted(state.jobs)]) if state.jobs else 9999
        phase = rng.choice(["running", "exited", "lost"])
        batch.append((node, PartReport(job_id, rng.choice([0, 1, 3]), phase, 0, 0, "", (0, 1))))
    # Fences that lie on GPUs: the agents' words about them.
    for n in sorted(state.nodes.values(), key=lambda n: n.name):
        for f in n.fences:
            if rng.random() < 0.5:
                phase = rng.choice(["running", "exited", "lost"])
                r = PartReport(f.job_id, f.attempt, phase, 0, 0, "", (f.gpu_index,))
                batch.append((n.name, r))
    rng.shuffle(batch)
    return state, batch


@pytest.mark.parametrize("seed", range(100))
def test_random_lives_then_a_batch_equal_the_same_reports_one_by_one(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond tests/test_daemon_reports.py: shrinks under way, grows, preemptions, nodes
    down (fences from expiry), repeated reports for one part, stopped_by_node, stale
    attempts, reports about fences; and batches split by MAX_REPORTS (small here)."""
    if seed % 3 == 0:
        monkeypatch.setattr(reports, "MAX_REPORTS", 3)
    alone, batch = _life(tmp_path / "one", seed)
    together, same = _life(tmp_path / "many", seed)
    assert batch == same and _memory(alone) == _memory(together)

    sent_alone: Outbox = []
    for node, r in batch:
        sent_alone += nodes.report(alone, node, r)
    sent_together: Outbox = []
    batcher = ReportBatcher(together, sent_together.extend)
    results = asyncio.run(_together(batcher, batch))

    assert results == [None] * len(batch)
    assert _memory(together) == _memory(alone)
    assert _stored(together) == _stored(alone)
    assert _events(together) == _events(alone)
    assert _same_ports(repr(sent_together)) == _same_ports(repr(sent_alone))
    if batch and seed % 3 == 0:
        assert batcher.largest <= 3 and batcher.changes == -(-len(batch) // 3)
    fresh = ClusterState(together.store, together.clock)
    fresh.load()
    assert {n: r.fences for n, r in fresh.nodes.items()} == {
        n: r.fences for n, r in together.nodes.items()
    }
    assert fresh.parts_by_node.as_dict() == together.parts_by_node.as_dict()


# -- failures and recovery --------------------------------------------------------------


def test_a_failed_batch_then_the_same_batch_once_the_disk_is_back(tmp_path: Path) -> None:
    """Every caller of the failed batch is told, nothing changes, nothing is sent; once the
    disk is back, the agents' repeated reports give what one by one would have."""
    state, batch = _life(tmp_path / "many", 23)
    alone, _ = _life(tmp_path / "one", 23)
    assert len(batch) > 3
    failpoint = tmp_path / "fail"
    state.writer.fail_when = failpoint
    before = _memory(state), _stored(state), _events(state)
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)

    async def go() -> tuple[list[BaseException | None], list[BaseException | None]]:
        failpoint.touch()
        first = await _together(batcher, batch)
        assert (_memory(state), _stored(state), _events(state)) == before
        sent.clear()  # what reports that write nothing sent meanwhile, as alone
        failpoint.unlink()
        return first, await _together(batcher, batch)

    first, second = asyncio.run(go())
    # Tried again one by one: those that write something are refused.
    assert all(r is None or isinstance(r, StoreUnavailable) for r in first), first
    assert any(isinstance(r, StoreUnavailable) for r in first), first
    assert second == [None] * len(batch)
    expected: Outbox = []
    for node, r in batch:
        expected += nodes.report(alone, node, r)
    assert _memory(state) == _memory(alone)
    assert _stored(state) == _stored(alone)
    assert _same_ports(repr(sent)) == _same_ports(repr(expected))
    assert not state.writer._changes and state.writer._turn is None


def test_a_failed_batch_does_not_let_a_plan_queued_behind_it_take_the_gpu(
    tmp_path: Path,
) -> None:
    """The batch frees n1:0 (its job exited) and fails to commit; a plan queued while it
    was pending must be built on memory as it is (the job still running): no start."""
    state = _state(tmp_path, ("n1",), gpus=1)
    running = state.submit(_job("running", 1, 1))
    _start(state, running, ("n1", 0))
    nodes.report(state, "n1", PartReport(running.id, 0, "running", 5, gpu_indices=(0,)))
    waiting = state.submit(_job("waiting", 1, 1))
    plan = core.Plan((core.Start(JobId(waiting.id), (GpuSlot(NodeName("n1"), 0),), "t"),), {}, {})
    failpoint = tmp_path / "fail"
    state.writer.fail_when = failpoint
    batcher = ReportBatcher(state, lambda out: None)

    async def go() -> tuple[object, object]:
        failpoint.touch()
        with state.writer._cond:
            exit_ = asyncio.ensure_future(
                batcher.record("n1", PartReport(running.id, 0, "exited", 0))
            )
            for _ in range(5):
                await asyncio.sleep(0)
            assert state.writer._changes == 1
            planned = asyncio.ensure_future(apply_plan_async(state, plan))
            await asyncio.sleep(0)
        r1 = await asyncio.wait_for(asyncio.gather(exit_, return_exceptions=True), HANG_S)
        failpoint.unlink()
        r2 = await asyncio.wait_for(planned, HANG_S)
        return r1[0], r2

    failed, (started, out) = asyncio.run(go())  # type: ignore[misc]
    assert isinstance(failed, StoreUnavailable)
    assert started == [] and out == []
    assert state.jobs[running.id].state is JobState.RUNNING
    assert state.jobs[waiting.id].state is JobState.PENDING


def test_reports_queued_behind_a_plan_are_built_on_the_plan(tmp_path: Path) -> None:
    """A plan pending (its write queued) while a job's exit and the new job's running
    report come: the batch waits for the plan, and sees the started part (not 'unknown':
    no stop, no fence for the new job)."""
    state = _state(tmp_path, ("n1",), gpus=1)
    running = state.submit(_job("running", 1, 1))
    _start(state, running, ("n1", 0))
    nodes.report(state, "n1", PartReport(running.id, 0, "running", 5, gpu_indices=(0,)))
    other = state.submit(_job("other", 1, 1))
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)

    async def go() -> list[object]:
        # First the exit (one batch), then the plan, then the new job's running report.
        await batcher.record("n1", PartReport(running.id, 0, "exited", 0))
        plan = core.Plan((core.Start(JobId(other.id), (GpuSlot(NodeName("n1"), 0),), "t"),), {}, {})
        with state.writer._cond:
            planned = asyncio.ensure_future(apply_plan_async(state, plan))
            await asyncio.sleep(0)
            assert state.writer._changes == 1
            rep = asyncio.ensure_future(
                batcher.record("n1", PartReport(other.id, 0, "running", 6, gpu_indices=(0,)))
            )
            for _ in range(5):
                await asyncio.sleep(0)
        return await asyncio.wait_for(asyncio.gather(planned, rep, return_exceptions=True), HANG_S)

    results = asyncio.run(go())
    assert results[1] is None
    job = state.jobs[other.id]
    assert job.state is JobState.RUNNING and job.parts[0].phase is PartPhase.RUNNING
    assert not state.nodes["n1"].fences
    assert not [c for _, c in sent if isinstance(c, StopPart)]


# -- callers that go away, loops that close, a batcher that stops --------------------


def test_a_caller_cancelled_while_queued_and_one_while_committing_hold_no_one_back(
    tmp_path: Path,
) -> None:
    """Callers cancelled at each await point (queued for the turn; their change being
    written): the others are told, the batch's commands go out, the plan after them is
    built on them, and no turn is left out."""
    state = _state(tmp_path, ("n1", "n2"), gpus=1)
    a = state.submit(_job("a", 1, 1))
    b = state.submit(_job("b", 1, 1))
    _start(state, a, ("n1", 0))
    _start(state, b, ("n2", 0))
    waiting = state.submit(_job("w", 1, 1))
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)

    async def go() -> list[object]:
        with state.writer._cond:
            first = asyncio.ensure_future(
                batcher.record("n1", PartReport(a.id, 0, "running", 1, gpu_indices=(0,)))
            )
            for _ in range(5):
                await asyncio.sleep(0)
            assert state.writer._changes == 1  # first's change is being written
            first.cancel()
            queued = asyncio.ensure_future(batcher.record("n1", PartReport(a.id, 0, "exited", 0)))
            kept = asyncio.ensure_future(
                batcher.record("n2", PartReport(b.id, 0, "running", 2, gpu_indices=(0,)))
            )
            await asyncio.sleep(0)
            queued.cancel()
            await asyncio.sleep(0)
        await asyncio.wait_for(kept, HANG_S)
        plan = core.Plan(
            (core.Start(JobId(waiting.id), (GpuSlot(NodeName("n1"), 0),), "t"),), {}, {}
        )
        started, _ = await asyncio.wait_for(apply_plan_async(state, plan), HANG_S)
        return started

    started = asyncio.run(go())
    # The cancelled callers' reports were recorded all the same (their agents' words).
    assert a.id not in state.jobs
    assert [j.id for j in started] == [waiting.id]
    assert ("n1", AckPart(a.id, 0)) in sent
    assert state.jobs[b.id].parts[0].phase is PartPhase.RUNNING
    assert not state.writer._changes and state.writer._turn is None


def test_the_batcher_across_event_loops(tmp_path: Path) -> None:
    """A loop ends with a batch written but not delivered and reports still queued; the
    next loop's reports are recorded, the pending batch applied first."""
    state = _state(tmp_path, ("n1", "n2"), gpus=1)
    a = state.submit(_job("a", 1, 1))
    b = state.submit(_job("b", 1, 1))
    _start(state, a, ("n1", 0))
    _start(state, b, ("n2", 0))
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)

    left: list[asyncio.Future[None]] = []

    async def first() -> None:
        left.append(
            asyncio.ensure_future(
                batcher.record("n1", PartReport(a.id, 0, "running", 1, gpu_indices=(0,)))
            )
        )
        for _ in range(5):
            await asyncio.sleep(0)
        left.append(asyncio.ensure_future(batcher.record("n2", PartReport(b.id, 0, "exited", 0))))
        await asyncio.sleep(0)
        # The loop ends here: its tasks are cancelled.

    with state.writer._cond:  # the first batch is taken only once the loop is gone
        asyncio.run(first())

    async def second() -> list[BaseException | None]:
        return await _together(batcher, [("n1", PartReport(a.id, 0, "exited", 0))])

    assert asyncio.run(second()) == [None]
    assert a.id not in state.jobs
    # n2's report was its closed loop's: not recorded, and never acknowledged.
    assert state.jobs[b.id].state is JobState.RUNNING
    assert ("n2", AckPart(b.id, 0)) not in sent
    assert not state.writer._changes and state.writer._turn is None


def test_stop_answers_every_caller_still_waiting(tmp_path: Path) -> None:
    """`stop()` while one batch is being written and more reports wait for their turn
    (the daemon's shielded report tasks outlive the server's stop): every caller must be
    answered (recorded or an error), none left waiting forever."""
    state = _state(tmp_path, ("n1", "n2"), gpus=1)
    a = state.submit(_job("a", 1, 1))
    b = state.submit(_job("b", 1, 1))
    _start(state, a, ("n1", 0))
    _start(state, b, ("n2", 0))
    batcher = ReportBatcher(state, lambda out: None)

    async def go() -> list[str]:
        with state.writer._cond:
            writing = asyncio.ensure_future(
                batcher.record("n1", PartReport(a.id, 0, "running", 1, gpu_indices=(0,)))
            )
            for _ in range(5):
                await asyncio.sleep(0)
            assert state.writer._changes == 1
            queued = asyncio.ensure_future(batcher.record("n2", PartReport(b.id, 0, "exited", 0)))
            await asyncio.sleep(0)
            batcher.stop()
        state.writer.close()
        _, pending = await asyncio.wait({writing, queued}, timeout=5)
        for t in pending:
            t.cancel()
        return [
            "writing" if writing in pending else "answered",
            "queued" if queued in pending else "answered",
        ]

    assert asyncio.run(go()) == ["answered", "answered"]


# -- building that raises, delivery that raises ------------------------------------------


def test_two_bad_reports_first_and_last_fail_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, batch = _life(tmp_path / "many", 27)
    alone, _ = _life(tmp_path / "one", 27)
    assert len(batch) >= 3
    bad = {id(batch[0][1]), id(batch[-1][1])}
    real = nodes.add_report

    def add_report(ch: object, node: str, r: PartReport) -> None:
        real(ch, node, r)  # type: ignore[arg-type]
        if id(r) in bad:  # having changed the change: it must be dropped whole
            raise RuntimeError("a bug")

    monkeypatch.setattr(nodes, "add_report", add_report)
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)
    results = asyncio.run(_together(batcher, batch))
    failed = [i for i, r in enumerate(results) if r is not None]
    assert failed == [0, len(batch) - 1]
    expected: Outbox = []
    for node, r in batch[1:-1]:
        expected += nodes.report(alone, node, r)
    assert _memory(state) == _memory(alone)
    assert _stored(state) == _stored(alone)
    assert _same_ports(repr(sent)) == _same_ports(repr(expected))
    assert not state.writer._changes and state.writer._turn is None


def test_a_delivery_that_raises_for_one_node_still_sends_the_other_nodes_commands(
    tmp_path: Path,
) -> None:
    """Sending to n1 raises (a bug in the link). One by one, n2's report is delivered by
    a call of its own; in a batch, the commands after n1's must still go out (n2's ack
    and the stop its failed part owes the job's part on n3), or at least the callers
    whose commands were dropped must not be told all went well."""
    state = _state(tmp_path, ("n1", "n2", "n3"), gpus=1)
    a = state.submit(_job("a", 1, 1))
    wide = state.submit(_job("wide", 2, 2))
    _start(state, a, ("n1", 0))
    _start(state, wide, ("n2", 0), ("n3", 0))
    sent: Outbox = []

    def send_all(out: Outbox) -> None:  # links.send_all, with a send that raises for n1
        for node, command in out:
            if node == "n1":
                raise RuntimeError("a bug sending to n1")
            sent.append((node, command))

    batcher = ReportBatcher(state, send_all)
    batch = [
        ("n1", PartReport(a.id, 0, "exited", 0)),
        ("n2", PartReport(wide.id, 0, "exited", 1)),
    ]
    results = asyncio.run(_together(batcher, batch))
    assert results[1] is None
    assert ("n2", AckPart(wide.id, 0)) in sent
    assert any(n == "n3" and isinstance(c, StopPart) for n, c in sent)


# -- fences -------------------------------------------------------------------------------


def test_a_gpu_fenced_for_two_stale_parts_stays_fenced_until_both_are_gone(
    tmp_path: Path,
) -> None:
    """n1 went down with job a on GPU 0 (fenced for a, attempt 0). It comes back and,
    in one batch, says a's old attempt still runs and that an unknown part (job 9999)
    runs on GPU 0 too; then that a's old attempt exited. 9999 may still run on GPU 0:
    the GPU must stay fenced, and no plan may give it away."""
    state = _state(tmp_path, ("n1",), gpus=1)
    a = state.submit(_job("a", 1, 1))
    _start(state, a, ("n1", 0))
    nodes.report(state, "n1", PartReport(a.id, 0, "running", 5, gpu_indices=(0,)))
    state.clock.now += 200  # type: ignore[attr-defined]
    nodes.expire_nodes(state, 100.0)
    assert state.nodes["n1"].fenced()
    nodes.register(state, _node("n1", 1), [PartReport(a.id, 0, "running", 5, gpu_indices=(0,))])
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)
    batch = [
        ("n1", PartReport(9999, 0, "running", 7, gpu_indices=(0,))),
        ("n1", PartReport(a.id, 0, "exited", 0)),
    ]
    assert asyncio.run(_together(batcher, batch)) == [None, None]
    assert any(n == "n1" and isinstance(c, StopPart) and c.job_id == 9999 for n, c in sent)
    assert 0 in state.nodes["n1"].fenced(), "GPU 0 freed while part 9999 may still run on it"
    waiting = state.submit(_job("w", 1, 1))
    plan = core.Plan((core.Start(JobId(waiting.id), (GpuSlot(NodeName("n1"), 0),), "t"),), {}, {})
    started, _ = apply_plan(state, plan)
    assert started == []


def test_reports_from_a_node_forgotten_while_they_wait(tmp_path: Path) -> None:
    """Reports queued for their turn while an admin forgets the node (a synchronous
    change): they are built on a node that is gone, raise nothing, fence nothing."""
    state = _state(tmp_path, ("n1", "n2"), gpus=1)
    a = state.submit(_job("a", 1, 1))
    b = state.submit(_job("b", 1, 1))
    _start(state, a, ("n1", 0))
    _start(state, b, ("n2", 0))
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)

    async def go() -> list[BaseException | None]:
        with state.writer._cond:
            running = PartReport(b.id, 0, "running", 1, gpu_indices=(0,))
            first = asyncio.ensure_future(batcher.record("n2", running))
            for _ in range(5):
                await asyncio.sleep(0)
            assert state.writer._changes == 1  # a batch being written: the rest wait
            tasks = [
                asyncio.ensure_future(batcher.record("n1", r))
                for r in (
                    PartReport(a.id, 0, "running", 1, gpu_indices=(0,)),
                    PartReport(a.id, 0, "exited", 0),
                    PartReport(4242, 0, "running", 1, gpu_indices=(0,)),
                )
            ]
            await asyncio.sleep(0)
            nodes.forget(state, "n1")  # settles the pending batch (releases the lock)
        await asyncio.wait_for(first, HANG_S)
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG_S)

    assert asyncio.run(go()) == [None, None, None]
    assert "n1" not in state.nodes
    assert "n1" not in {n.name for n in state.store.load_nodes()}
    assert state.jobs[a.id].state is JobState.PREEMPTED


def test_a_listener_that_raises_for_one_job_leaves_the_other_jobs_views_fresh(
    tmp_path: Path,
) -> None:
    """A listener (a watch, a controller) raises for job a. One by one, b's report is a
    change of its own: b is notified and the core sees it requeued. In one batch, b's
    notification comes after a's in the same Change._apply: it must still happen, or the
    scheduler keeps b's stale view (running, holding its GPU) and never starts it again."""
    results = {}
    for how in ("alone", "together"):
        state = _state(tmp_path / how, ("n1", "n2"), gpus=1)
        a = state.submit(_job("a", 1, 1))
        b = state.submit(_job("b", 1, 1))
        _start(state, a, ("n1", 0))
        _start(state, b, ("n2", 0))
        state.snapshot()  # views taken: from here only notified jobs are seen anew

        def listener(job: JobRecord, a_id: int = a.id) -> None:
            if job.id == a_id:
                raise RuntimeError("a bug in a watcher")

        state.listeners.append(listener)
        batch = [
            ("n1", PartReport(a.id, 0, "running", 1, gpu_indices=(0,))),
            ("n2", PartReport(b.id, 0, "lost")),
        ]
        if how == "alone":
            for node, r in batch:
                with contextlib.suppress(RuntimeError):  # committed; the listener raised
                    nodes.report(state, node, r)
        else:
            batcher = ReportBatcher(state, lambda out: None)
            asyncio.run(_together(batcher, batch))
        assert state.jobs[b.id].state is JobState.PREEMPTED
        view = next(j for j in state.snapshot().jobs if j.id == b.id)
        results[how] = view.phase
    assert results["alone"] == core.JobPhase.PENDING
    assert results["together"] == core.JobPhase.PENDING


def test_more_than_max_reports_at_once(tmp_path: Path) -> None:
    """600 parts report running together (the real MAX_REPORTS, 512): two changes, every
    caller told, every part running, and the store says so."""
    state = _state(tmp_path, tuple(f"n{i}" for i in range(75)), gpus=8)
    jobs = state.submit_many([_job(f"j{i}", 1, 1) for i in range(600)])
    slots = [GpuSlot(NodeName(f"n{i}"), g) for i in range(75) for g in range(8)]
    starts = tuple(core.Start(JobId(j.id), (s,), "t") for j, s in zip(jobs, slots, strict=True))
    apply_plan(state, core.Plan(starts, {}, {}))
    batch = [
        (s.node, PartReport(j.id, 0, "running", 0, 100 + k, gpu_indices=(s.index,)))
        for k, (j, s) in enumerate(zip(jobs, slots, strict=True))
    ]
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)
    assert asyncio.run(_together(batcher, batch)) == [None] * 600
    assert (batcher.changes, batcher.largest) == (2, reports.MAX_REPORTS)
    assert all(state.jobs[j.id].parts[0].phase is PartPhase.RUNNING for j in jobs)
    stored = {j.id: j.parts[0].pid for j in state.store.load_jobs(active_only=True)}
    assert stored == {j.id: 100 + k for k, j in enumerate(jobs)}
    assert sent == []


def test_a_report_after_stop_and_close_is_refused_not_left_waiting(tmp_path: Path) -> None:
    state = _state(tmp_path, ("n1",), gpus=1)
    a = state.submit(_job("a", 1, 1))
    _start(state, a, ("n1", 0))
    batcher = ReportBatcher(state, lambda out: None)

    async def go() -> list[BaseException | None]:
        batcher.stop()
        state.writer.close()
        return await _together(batcher, [("n1", PartReport(a.id, 0, "exited", 0))])

    [result] = asyncio.run(go())
    assert isinstance(result, StoreUnavailable)
    assert state.jobs[a.id].state is JobState.RUNNING
