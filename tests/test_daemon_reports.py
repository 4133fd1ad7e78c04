"""Agents' reports recorded together (daemon/reports.py): the reports of many nodes built
into one change and one transaction leave memory, store and the commands sent exactly as
recording them one after another does; a batch that fails to commit tells every caller and
changes nothing; a report whose building raises fails alone. A real SQLite file in a real
event loop."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import pytest

from schedulerd import core
from schedulerd.core import GpuSlot, JobId, NodeName
from schedulerd.daemon import nodes, reports
from schedulerd.daemon.change import Change
from schedulerd.daemon.commands import Outbox
from schedulerd.daemon.nodes import PartReport
from schedulerd.daemon.plans import apply_plan
from schedulerd.daemon.reports import ReportBatcher, SupersededReport
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, Store, StoreUnavailable

POLICY = "version: 1\nconsumers:\n  a: {grace: 10s}\n"
NODES = ("n1", "n2", "n3", "n4")
GPUS = 2
PHASES = ("running", "running", "exited", "lost", "refused", "start_failed")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _job(name: str, gpus_min: int, gpus_max: int) -> JobRecord:
    return JobRecord(
        0, "/a", "u", name, ["x"], {}, "", gpus_min, gpus_max, 0, JobState.PENDING, 0.0
    )


def _cluster(path: Path, seed: int) -> tuple[ClusterState, list[tuple[str, PartReport]]]:
    """A cluster with jobs on one node and on two, elastic and not, some reported
    running, one being cancelled; and a batch of reports drawn from the same seed: for
    live parts, unknown jobs, old attempts and ended ones, several from one node."""
    rng = random.Random(seed)
    store = Store(path / "s.db")
    state = ClusterState(store, Clock())
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    for name in NODES:
        gpus = [GpuRecord(i, f"{name}u{i}", "f", 0) for i in range(GPUS)]
        nodes.register(state, NodeRecord(name, "default", gpus), [])
    free = [GpuSlot(NodeName(n), i) for n in NODES for i in range(GPUS)]
    rng.shuffle(free)
    placed: list[tuple[int, tuple[GpuSlot, ...]]] = []
    while free:
        width = min(len(free), rng.choice((1, 1, 2, 3)))
        slots, free = tuple(free[:width]), free[width:]
        elastic = width > 1 and rng.random() < 0.4
        job = state.submit(_job(f"j{len(placed)}", 1 if elastic else width, width))
        apply_plan(state, core.Plan((core.Start(JobId(job.id), slots, "t"),), {}, {}))
        placed.append((job.id, slots))
    for job_id, slots in placed:
        if rng.random() < 0.6:
            for node in sorted({s.node for s in slots}):
                held = tuple(s.index for s in slots if s.node == node)
                nodes.report(state, node, PartReport(job_id, 0, "running", 7, gpu_indices=held))
    if placed and rng.random() < 0.7:
        state.cancel(rng.choice(placed)[0], "u")
    batch: list[tuple[str, PartReport]] = []
    for job_id, slots in placed:
        for node in sorted({s.node for s in slots}):
            if rng.random() < 0.3:
                continue
            held = tuple(s.index for s in slots if s.node == node)
            phase = rng.choice(PHASES)
            alive = held if rng.random() < 0.7 else held[:1]
            code = rng.choice((0, 0, 1, 137))
            batch.append((node, PartReport(job_id, 0, phase, code, 9, "", alive)))
    for _ in range(rng.randint(0, 3)):  # never ours, an old attempt, an ended one
        name = rng.choice(NODES)
        job_id = rng.choice([9999, *(j for j, _ in placed)])
        phase = rng.choice(("running", "exited"))
        batch.append((name, PartReport(job_id, rng.choice((0, 5)), phase, 0, gpu_indices=(0,))))
    rng.shuffle(batch)
    return state, batch


def _same_ports(text: str) -> str:
    """A multi-node job's rendezvous address has a free port drawn at its start: the two
    clusters differ there only."""
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)


def _memory(state: ClusterState) -> str:
    return _same_ports(repr(sorted(state.jobs.items())) + repr(sorted(state.nodes.items())))


def _stored(state: ClusterState) -> str:
    jobs = sorted(state.store.load_jobs(), key=lambda j: j.id)
    nodes_ = sorted(state.store.load_nodes(), key=lambda n: n.name)
    return _same_ports(repr(jobs) + repr(nodes_))


async def _record_together(
    batcher: ReportBatcher, batch: list[tuple[str, PartReport]]
) -> list[BaseException | None]:
    tasks = [asyncio.ensure_future(batcher.record(node, r)) for node, r in batch]
    return await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("seed", range(40))
def test_reports_in_one_change_equal_the_same_reports_one_by_one(tmp_path: Path, seed: int) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    alone, batch = _cluster(tmp_path / "one", seed)
    together, same = _cluster(tmp_path / "many", seed)
    assert batch == same and _memory(alone) == _memory(together)

    before_stored = _stored(alone)
    sent_alone: Outbox = []
    for node, r in batch:
        sent_alone += nodes.report(alone, node, r)

    sent_together: Outbox = []
    batcher = ReportBatcher(together, sent_together.extend)
    results = asyncio.run(_record_together(batcher, batch))

    assert results == [None] * len(batch)
    # One change for all of them, counted as such.
    assert (batcher.changes, batcher.largest) == ((1, len(batch)) if batch else (0, 0))
    metric = together.metrics.registry.get_sample_value
    assert metric("schedulerd_agent_reports_total") == len(batch)
    # A transaction counted only when the change wrote something.
    assert metric("schedulerd_agent_report_changes_total") == batcher.transactions
    assert batcher.transactions == (1 if _stored(alone) != before_stored else 0)
    assert _memory(together) == _memory(alone)
    assert _stored(together) == _stored(alone)
    assert _same_ports(repr(sent_together)) == _same_ports(repr(sent_alone))
    # And what the store rebuilds is what memory holds.
    fresh = ClusterState(together.store, together.clock)
    fresh.load()
    for job_id, job in fresh.jobs.items():
        live = together.jobs[job_id]
        assert (job.state, job.parts, job.attempt) == (live.state, live.parts, live.attempt)
    assert {n: r.fences for n, r in fresh.nodes.items()} == {
        n: r.fences for n, r in together.nodes.items()
    }


def test_a_batch_that_fails_to_commit_tells_every_caller_and_changes_nothing(
    tmp_path: Path,
) -> None:
    state, batch = _cluster(tmp_path, 3)
    assert len(batch) > 2
    failpoint = tmp_path / "fail"
    state.writer.fail_when = failpoint
    failpoint.touch()
    before = _memory(state), _stored(state)
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)

    results = asyncio.run(_record_together(batcher, batch))

    # Tried again one by one, as each would have been alone: a report that writes
    # nothing is recorded, one that writes is refused; after three refusals in a row
    # the rest are refused at once.
    assert all(r is None or isinstance(r, StoreUnavailable) for r in results), results
    refused = [i for i, r in enumerate(results) if r is not None]
    assert refused
    assert (_memory(state), _stored(state)) == before
    assert batcher.transactions == 0
    assert state.metrics.registry.get_sample_value("schedulerd_agent_reports_total") == len(
        batch
    ) - len(refused)


def test_reports_that_wait_for_a_pending_change_go_in_one_change_after_it(
    tmp_path: Path,
) -> None:
    """While one report's change is being written, reports from every node queue; they
    are then recorded in one change, not one each."""
    state, batch = _cluster(tmp_path, 5)
    assert len(batch) > 2
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)

    async def go() -> list[BaseException | None]:
        with state.writer._cond:  # the writer takes nothing meanwhile
            first = asyncio.ensure_future(batcher.record(*batch[0]))
            for _ in range(5):
                await asyncio.sleep(0)
            assert state.writer._changes == 1  # the first report's change is pending
            rest = [asyncio.ensure_future(batcher.record(n, r)) for n, r in batch[1:]]
            for _ in range(5):
                await asyncio.sleep(0)
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(go())
    assert results == [None] * len(batch)
    assert (batcher.changes, batcher.largest) == (2, len(batch) - 1)


def test_a_report_whose_building_raises_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in building one report (not the disk) fails that report's caller; the
    other nodes' reports are recorded one by one, as they would have been alone."""
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    state, batch = _cluster(tmp_path / "many", 7)
    alone, same = _cluster(tmp_path / "one", 7)
    assert batch == same and len(batch) > 2
    bad = len(batch) // 2
    real = nodes.add_report

    def add_report(ch: object, node: str, r: PartReport) -> None:
        if r is batch[bad][1]:
            raise RuntimeError("a bug")
        real(ch, node, r)  # type: ignore[arg-type]

    monkeypatch.setattr(nodes, "add_report", add_report)
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)

    results = asyncio.run(_record_together(batcher, batch))

    failed = [i for i, r in enumerate(results) if r is not None]
    assert failed == [bad]
    assert isinstance(results[bad], RuntimeError)
    expected: Outbox = []
    for i, (node, r) in enumerate(batch):
        if i != bad:
            expected += nodes.report(alone, node, r)
    assert _memory(state) == _memory(alone)
    assert _same_ports(repr(sent)) == _same_ports(repr(expected))


def test_a_fence_set_and_lifted_in_one_change_is_gone(tmp_path: Path) -> None:
    """Two reports of one batch: a part unknown to the daemon reported running (fenced),
    then the same part reported gone (unfenced). The change must lift the fence it set
    itself, not only those the live node had."""
    state, _ = _cluster(tmp_path, 0)
    ch = Change(state)
    ch.fence("n1", [0], 9999, 0, "unknown")
    ch.unfence("n1", 9999, 0)
    ch.commit()
    assert all(f.job_id != 9999 for f in state.nodes["n1"].fences)
    assert all(f.job_id != 9999 for n in state.store.load_nodes() for f in n.fences)


def test_a_report_whose_rows_cannot_be_written_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug turning one job's record into rows (after the batch was built): the other
    reports are recorded one by one, as they would have been alone."""
    import schedulerd.daemon.change as change_module

    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    state, batch = _cluster(tmp_path / "many", 11)
    alone, _ = _cluster(tmp_path / "one", 11)
    live = [i for i, (_, r) in enumerate(batch) if r.job_id in state.jobs and r.attempt == 0]
    assert len(batch) > 2 and live
    bad_job = batch[live[0]][1].job_id
    real = change_module.job_write

    def job_write(before: JobRecord, after: JobRecord) -> object:
        if after.id == bad_job:
            raise RuntimeError("a bug")
        return real(before, after)

    monkeypatch.setattr(change_module, "job_write", job_write)
    sent: Outbox = []
    results = asyncio.run(_record_together(ReportBatcher(state, sent.extend), batch))
    monkeypatch.undo()

    failed = {i for i, r in enumerate(results) if r is not None}
    touching = {i for i, (_, r) in enumerate(batch) if r.job_id == bad_job}
    assert failed and failed <= touching  # only reports of that job, not of others
    assert all(isinstance(results[i], RuntimeError) for i in failed)
    expected: Outbox = []
    for i, (node, r) in enumerate(batch):
        if i not in failed:
            expected += nodes.report(alone, node, r)
    assert _memory(state) == _memory(alone)
    assert _same_ports(repr(sent)) == _same_ports(repr(expected))


def test_a_report_from_a_session_replaced_before_its_turn_is_dropped(tmp_path: Path) -> None:
    """n1's agent sent "running" for job a, then its stream broke and it registered again
    without a (the part had ended and was forgotten) while the report still waited for
    its turn. Built after the registration, the stale report would fence n1's GPU for a
    part that no longer exists, and send a stop the agent ignores: the GPU would stay
    fenced until n1 next registers. It is dropped instead."""
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, Clock())
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    for name in ("n1", "n2"):
        nodes.register(state, NodeRecord(name, "default", [GpuRecord(0, f"{name}u0", "f", 0)]), [])
    a = state.submit(_job("a", 1, 1))
    b = state.submit(_job("b", 1, 1))
    for job, name in ((a, "n1"), (b, "n2")):
        slots = (GpuSlot(NodeName(name), 0),)
        apply_plan(state, core.Plan((core.Start(JobId(job.id), slots, "t"),), {}, {}))
        nodes.report(state, name, PartReport(job.id, 0, "running", 5, gpu_indices=(0,)))
    old_session = state.nodes["n1"].epoch
    sent: Outbox = []
    batcher = ReportBatcher(state, sent.extend)

    async def go() -> list[BaseException | None]:
        with state.writer._cond:  # n2's change is pending; n1's report waits its turn
            first = asyncio.ensure_future(
                batcher.record("n2", PartReport(b.id, 0, "exited", 0), state.nodes["n2"].epoch)
            )
            for _ in range(5):
                await asyncio.sleep(0)
            assert state.writer._changes == 1
            stale = asyncio.ensure_future(
                batcher.record(
                    "n1", PartReport(a.id, 0, "running", 5, gpu_indices=(0,)), old_session
                )
            )
            await asyncio.sleep(0)
        # The agent registers again, listing nothing (synchronous, as in Connect).
        nodes.register(state, NodeRecord("n1", "default", [GpuRecord(0, "n1u0", "f", 0)]), [])
        return await asyncio.gather(first, stale, return_exceptions=True)

    first, stale = asyncio.run(go())
    assert first is None
    assert state.nodes["n1"].epoch == old_session + 1
    assert state.nodes["n1"].fences == []  # the GPU is free for the next job
    assert [n for n, _ in sent if n == "n1"] == []
    assert isinstance(stale, SupersededReport)


def test_reports_retried_one_by_one_stop_after_three_refusals_in_a_row(tmp_path: Path) -> None:
    """The disk is down: a batch of reports that all write fails, is tried again one by
    one, and after three refusals in a row the rest are refused without being tried
    (each try would log the same failure)."""
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, Clock())
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    names = [f"n{i}" for i in range(8)]
    for name in names:
        nodes.register(state, NodeRecord(name, "default", [GpuRecord(0, f"{name}u0", "f", 0)]), [])
    batch = []
    for name in names:
        job = state.submit(_job(f"j{name}", 1, 1))
        slots = (GpuSlot(NodeName(name), 0),)
        apply_plan(state, core.Plan((core.Start(JobId(job.id), slots, "t"),), {}, {}))
        batch.append((name, PartReport(job.id, 0, "running", 5, gpu_indices=(0,))))  # writes
    failpoint = tmp_path / "fail"
    state.writer.fail_when = failpoint
    failpoint.touch()
    tried_before = state.writer.batches

    results = asyncio.run(_record_together(ReportBatcher(state, lambda out: None), batch))

    assert all(isinstance(r, StoreUnavailable) for r in results), results
    # The batch, then three tried alone; the other five refused untried.
    assert state.writer.batches - tried_before == 1 + reports.GIVE_UP_AFTER
