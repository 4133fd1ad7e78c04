"""A hostile reviewer's tests of the group writer's turns (store/group.py: changes_idle,
_wake_next): callers waiting to build a state change are served first come first
served, one woken per delivered change. Real SQLite files, real event loops; the writer
is made to hold a batch by taking its lock (its thread takes writes only under it)."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import pytest

from schedulerd.store import Store, StoreUnavailable
from schedulerd.store.group import GroupWriter


def _writer(tmp_path: Path) -> tuple[Store, GroupWriter]:
    store = Store(tmp_path / "s.db")
    return store, GroupWriter(store, fail_when=tmp_path / "fail")


class Pending:
    """The most changes ever pending in the writer right after one was queued: one at
    a time, when every caller waits for its turn (the protocol)."""

    def __init__(self) -> None:
        self.most = 0

    def queue(self, writer: GroupWriter) -> asyncio.Future[None]:
        future = writer.submit(lambda store: None, change=True)
        self.most = max(self.most, writer._changes)
        return future


@pytest.mark.parametrize("seed", range(6))
def test_random_waiters_cancels_failures_and_settles_strand_no_one(
    tmp_path: Path, seed: int
) -> None:
    """Hundreds of callers: some queue no change, some are cancelled before or after
    being woken, some batches fail (the failpoint), and a synchronous caller settles
    now and then (a cancel, a node timeout). Every caller not cancelled is served, in
    the order it came, and never with another change pending."""
    rng = random.Random(seed)
    store, writer = _writer(tmp_path)
    failpoint = writer.fail_when
    assert failpoint is not None
    pending = Pending()
    served: list[int] = []
    failed = 0

    async def caller(i: int, queues: bool) -> None:
        nonlocal failed
        await writer.changes_idle()
        assert writer._changes == 0, f"caller {i} served with a change pending"
        served.append(i)
        if not queues:
            return
        try:
            await pending.queue(writer)
        except StoreUnavailable:
            failed += 1

    async def scenario() -> list[int]:
        tasks: list[asyncio.Task[None]] = []
        for i in range(300):
            tasks.append(asyncio.create_task(caller(i, rng.random() < 0.8)))
            if rng.random() < 0.3:
                await asyncio.sleep(0)
            roll = rng.random()
            if roll < 0.05:  # one waiting, or woken and not yet run
                victim = rng.choice(tasks)
                victim.cancel()
            elif roll < 0.10:
                if failpoint.exists():
                    failpoint.unlink()
                else:
                    failpoint.touch()
            elif roll < 0.15:
                writer.settle()  # a synchronous change comes first, on the loop's thread
            elif roll < 0.20 and writer._turn is not None:
                # The one just woken is cancelled before its coroutine runs.
                for t in tasks:
                    if not t.done():
                        t.cancel()
                        break
        done, _ = await asyncio.wait(tasks, timeout=30)
        assert len(done) == len(tasks), "a caller was stranded"
        return [i for i, t in enumerate(tasks) if t.cancelled()]

    try:
        cancelled = asyncio.run(scenario())
    finally:
        writer.close()
        store.close()
    assert pending.most == 1 and writer._changes == 0
    assert served == sorted(served)  # first come, first served
    assert set(served) | set(cancelled) == set(range(300))


def test_a_change_queued_while_a_turn_is_out_holds_the_woken_caller_back(
    tmp_path: Path,
) -> None:
    """A caller is woken (its coroutine not yet run) and another change is queued
    meanwhile (a caller that did not wait for its turn): the woken one must wait for
    that change to be delivered, keep its place before those that came after it, and
    then be served."""
    store, writer = _writer(tmp_path)
    pending = Pending()
    order: list[str] = []

    async def caller(name: str) -> None:
        await writer.changes_idle()
        assert writer._changes == 0, f"{name} served with a change pending"
        order.append(name)
        await pending.queue(writer)

    async def scenario() -> None:
        tasks: list[asyncio.Task[None]] = []

        def intrude() -> None:
            # Delivered right after the first change, in the same batch: a was just
            # woken (its coroutine not run yet) when this change is queued.
            assert writer._turn is not None
            pending.queue(writer)
            tasks.append(asyncio.create_task(caller("b")))

        with writer._cond:  # both writes in one batch
            first = pending.queue(writer)
            tasks.append(asyncio.create_task(caller("a")))
            await asyncio.sleep(0)  # a waits behind the first change
            writer.submit(lambda store: None, intrude)
        await first
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    try:
        asyncio.run(scenario())
    finally:
        writer.close()
        store.close()
    assert order == ["a", "b"]
    assert pending.most == 1


def test_a_woken_caller_that_queues_no_change_passes_the_turn_even_if_it_raises(
    tmp_path: Path,
) -> None:
    """Woken callers that fail before queueing (a closed writer answers StoreUnavailable
    at submit, a report that changes nothing): each passes the turn to the next."""
    store, writer = _writer(tmp_path)
    pending = Pending()
    served: list[int] = []

    async def caller(i: int) -> None:
        await writer.changes_idle()
        served.append(i)
        if i % 3 == 0:
            raise ValueError("nothing to change after all")
        await pending.queue(writer)

    async def scenario() -> list[object]:
        first = pending.queue(writer)
        tasks = [asyncio.create_task(caller(i)) for i in range(30)]
        await first
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

    try:
        results = asyncio.run(scenario())
    finally:
        writer.close()
        store.close()
    assert served == list(range(30))
    assert all(isinstance(r, ValueError) == (i % 3 == 0) for i, r in enumerate(results))
    assert pending.most == 1


def test_waiters_across_event_loops_and_a_settle_from_outside_any_loop(tmp_path: Path) -> None:
    """The daemon's tests call asyncio.run several times with one writer. Waiters left
    behind by a loop that closed (cancelled at its shutdown, woken or not) must not hold
    the next loop's callers back, nor must a settle() called between loops."""
    store, writer = _writer(tmp_path)
    pending = Pending()

    async def caller() -> None:
        await writer.changes_idle()
        await pending.queue(writer)

    async def leave_waiters() -> None:
        first = pending.queue(writer)
        left = [asyncio.create_task(caller()) for _ in range(10)]
        await asyncio.sleep(0)
        await first  # one woken; the loop closes with it and the others waiting
        assert not all(t.done() for t in left)

    async def serve(n: int) -> None:
        await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(n))), 10)

    try:
        asyncio.run(leave_waiters())
        writer.settle()
        asyncio.run(serve(5))
        asyncio.run(leave_waiters())
        asyncio.run(serve(5))
    finally:
        writer.close()
        store.close()
    assert writer._changes == 0 and pending.most == 1


def test_a_change_whose_loop_closed_before_its_delivery_strands_no_later_caller(
    tmp_path: Path,
) -> None:
    """A report committing while its loop shuts down (asyncio.run cancels the task, then
    closes the loop before the writer's thread is done): the writer cannot hand the
    delivery to that loop. The next loop's caller waiting for its turn must still get
    it, not wait forever for a change no loop will ever deliver."""
    store, writer = _writer(tmp_path)
    applied: list[str] = []

    async def leave_a_change() -> None:
        async def report() -> None:
            await writer.changes_idle()
            await writer.submit(lambda store: None, lambda: applied.append("r"), change=True)

        task = asyncio.create_task(report())
        await asyncio.sleep(0)  # queued; the loop closes before it is written
        assert not task.done()

    async def next_loop() -> None:
        await asyncio.wait_for(writer.changes_idle(), 10)
        await writer.submit(lambda store: None, lambda: applied.append("next"), change=True)

    try:
        with writer._cond:  # the writer's thread takes it only once the loop is closed
            asyncio.run(leave_a_change())
        asyncio.run(next_loop())
    finally:
        writer.close()
        store.close()
    assert applied == ["r", "next"]


def test_a_future_with_callbacks_of_a_closed_loop_does_not_stop_the_next_deliveries(
    tmp_path: Path,
) -> None:
    """A write whose future has a done callback (the audit trail's) and whose loop closed
    before it was delivered: delivering it must not raise (a closed loop cannot call
    back), or every write delivered after it in the next loop is never answered."""
    store, writer = _writer(tmp_path)
    done = threading.Event()

    async def leave_a_write() -> None:
        writer.submit(lambda store: None).add_done_callback(lambda f: done.set())

    async def next_loop() -> None:
        await asyncio.wait_for(writer.submit(lambda store: None), 10)

    try:
        with writer._cond:
            asyncio.run(leave_a_write())
        asyncio.run(next_loop())
    finally:
        writer.close()
        store.close()
    assert not done.is_set()  # its loop is gone: nobody to call back
