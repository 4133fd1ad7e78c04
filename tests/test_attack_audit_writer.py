"""A hostile reviewer's tests of the audit trail's batches through the group writer
(daemon/audit.py with store/group.py): no record lost on a failed batch or at shutdown,
the trail in the order things happened, and an audit batch never holding up the
daemon's own writes. Real SQLite files, real event loops, the store-commit-fail
failpoint for failures."""

from __future__ import annotations

import asyncio
from pathlib import Path

from schedulerd.auth.identity import ANONYMOUS
from schedulerd.daemon import audit
from schedulerd.daemon.audit import AuditTrail
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import load_policy
from schedulerd.store import JobRecord, JobState, Store
from schedulerd.store.group import GroupWriter
from schedulerd.store.security import SecurityStore

POLICY = "version: 1\nconsumers:\n  a: {grace: 10s}\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        # Past the refusals' window at every record: each one is recorded, not counted.
        self.now += audit.WINDOW_S + 1
        return self.now


def _refuse(trail: AuditTrail, detail: str) -> None:
    trail.refused_call(ANONYMOUS, "ListJobs", "UNAUTHENTICATED", detail)


def _stored(store: Store) -> list[str]:
    """The trail's details, oldest first (in the order of their ids)."""
    return [e.detail for e in reversed(SecurityStore(store).list_audit(1000))]


def _job(name: str) -> JobRecord:
    return JobRecord(0, "/a", "u", name, ["x"], {}, "", 1, 1, 0, JobState.PENDING, 0.0)


def test_batches_that_fail_together_come_back_in_the_order_they_were_made(
    tmp_path: Path,
) -> None:
    """Two batches in the writer at once (the timer's flush, then a reader's `written()`)
    both fail (the disk is full for a moment): once the disk is back, the trail must
    read in the order things happened, not the second batch's records first."""
    store = Store(tmp_path / "s.db")
    failpoint = tmp_path / "fail"
    writer = GroupWriter(store, fail_when=failpoint)
    trail = AuditTrail(SecurityStore(store), Clock(), writer)

    async def scenario() -> None:
        failpoint.touch()
        _refuse(trail, "1")
        _refuse(trail, "2")
        trail.flush()  # the timer's batch
        _refuse(trail, "3")
        await trail.written()  # a second batch while the first is in the writer
        _refuse(trail, "4")
        failpoint.unlink()
        await trail.written()

    try:
        asyncio.run(scenario())
        assert _stored(store) == ["1", "2", "3", "4"]
    finally:
        writer.close()
        store.close()


def test_failed_batches_keep_the_newest_records_bounded_and_lose_none_once_back(
    tmp_path: Path,
) -> None:
    """A store failing for a long while: what is kept for a retry is bounded (the newest
    MAX_BUFFERED records); once the store is back the next `written()` writes them all,
    in order, and nothing is kept any more."""
    store = Store(tmp_path / "s.db")
    failpoint = tmp_path / "fail"
    writer = GroupWriter(store, fail_when=failpoint)
    trail = AuditTrail(SecurityStore(store), Clock(), writer)
    bound = 50
    made: list[str] = []

    async def scenario() -> None:
        failpoint.touch()
        for i in range(4 * bound):
            made.append(str(i))
            _refuse(trail, str(i))
            if i % 7 == 0:
                await trail.written()
        await trail.written()
        assert len(trail._buffer) <= bound
        failpoint.unlink()
        await trail.written()
        assert trail._buffer == []

    original = audit.MAX_BUFFERED
    audit.MAX_BUFFERED = bound
    try:
        asyncio.run(scenario())
        stored = _stored(store)
    finally:
        audit.MAX_BUFFERED = original
        writer.close()
        store.close()
    assert stored == made[-len(stored) :] and len(stored) == bound


def test_records_made_just_before_shutdown_are_written(tmp_path: Path) -> None:
    """Daemon.stop: the audit trail is flushed, then the writer closed, on the event
    loop, with submissions still in the writer. Every record made before is stored,
    with every submission acknowledged."""
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, Clock())
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    trail = AuditTrail(SecurityStore(store), Clock(), state.writer)

    async def scenario() -> list[object]:
        with state.writer._cond:  # the submissions and the last batch wait for the disk
            tasks = [asyncio.ensure_future(state.submit_async(_job(f"j{i}"))) for i in range(20)]
            await asyncio.sleep(0)
            for i in range(30):
                _refuse(trail, str(i))
            trail.flush()
            _refuse(trail, "last")
            trail.flush()  # Daemon.stop's
        state.writer.close()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

    try:
        results = asyncio.run(scenario())
        assert all(isinstance(r, JobRecord) for r in results)
        assert _stored(store) == [*map(str, range(30)), "last"]
    finally:
        store.close()


def test_an_audit_batch_left_by_a_closed_loop_does_not_hold_up_the_next_loops_writes(
    tmp_path: Path,
) -> None:
    """A test (or a daemon restarted in one process) runs one event loop after another
    with one writer: an audit batch flushed just as the first loop ended (its future
    has the trail's callback) must still be written, and a submission in the next loop
    must be answered."""
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, Clock())
    state.set_policy(load_policy(POLICY, "p"), store.save_policy(POLICY, "p", 0.0))
    trail = AuditTrail(SecurityStore(store), Clock(), state.writer)

    async def first() -> None:
        _refuse(trail, "at the end of the first loop")
        trail.flush()

    async def second() -> JobRecord:
        return await asyncio.wait_for(state.submit_async(_job("next")), 10)

    try:
        with state.writer._cond:  # written only once the first loop has closed
            asyncio.run(first())
        job = asyncio.run(second())
        assert state.jobs == {job.id: job}
        assert _stored(store) == ["at the end of the first loop"]
    finally:
        state.writer.close()
        store.close()


def test_a_reader_in_the_next_loop_is_answered_and_sees_the_last_loops_records(
    tmp_path: Path,
) -> None:
    """The last batch given to the writer belongs to a loop that closed before it was
    written: a reader of the trail in the next loop (ListAudit: `written()`) must be
    answered, with those records in the store, not fail on a future of another loop."""
    store = Store(tmp_path / "s.db")
    writer = GroupWriter(store)
    trail = AuditTrail(SecurityStore(store), Clock(), writer)

    async def first() -> None:
        _refuse(trail, "at the end of the first loop")
        trail.flush()

    async def read() -> list[str]:
        await asyncio.wait_for(trail.written(), 10)
        return _stored(store)

    try:
        with writer._cond:  # written only once the first loop has closed
            asyncio.run(first())
        assert asyncio.run(read()) == ["at the end of the first loop"]
    finally:
        writer.close()
        store.close()
