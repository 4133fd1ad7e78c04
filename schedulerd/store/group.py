"""Group commit: concurrent writes share one SQLite transaction, on a thread of their own.

A unary SubmitJob that committed alone, on the event loop, paid one fsync (WAL,
synchronous=FULL) and held the loop meanwhile: about 250 submissions/s from one
client. Here each write is queued with what to do once it is durable (`apply`); one
thread takes every write queued, runs them in order in one transaction on its own
connection (`Store.open_writer`), commits (one fsync for all of them), and hands the
batch back to the event loop, which applies each in commit order and only then
resolves its future: a caller is acknowledged after its commit, never before.

A batch that fails to commit (disk full, I/O error, the `store-commit-fail` failpoint)
is rolled back whole: none of its writes is applied or acknowledged, every one of its
futures raises StoreUnavailable, and memory stays as it was. Writes queued after it
are independent of it (see docs/group-commit.md: only one state change that reads live
records is pending at a time) and go on in the next batch.

Delivery (apply, then resolve) happens only on the thread that owns the state, the
event loop: from a callback the writer schedules there, or from `settle()`, which a
synchronous state change calls first so that it never reads a record a pending change
is about to replace.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from schedulerd.store.store import Store, StoreUnavailable

log = logging.getLogger("schedulerd.store")

# The most writes in one transaction: a plan of thousands of starts is one write, a
# submission another; past this the rest wait for the next batch (a few ms).
MAX_BATCH = 1024
# The most writes queued: past it a caller is answered UNAVAILABLE at once rather than
# the daemon's memory growing behind a disk that has stalled.
MAX_QUEUED = 50_000


@dataclass(eq=False)
class _Write:
    write: Callable[[Store], object]  # on the writer's thread, inside its transaction
    apply: Callable[[], None] | None  # on the event loop, once committed
    future: asyncio.Future[None] | None
    change: bool  # reads live records (daemon/change.py), as opposed to a pure insert
    error: StoreUnavailable | None = None


class GroupWriter:
    def __init__(self, store: Store, fail_when: Path | None = None) -> None:
        self.store = store
        # The failpoint store-commit-fail (schedulerd/failpoints.py): while this file
        # exists, every batch is written and then rolled back as a failed COMMIT would be.
        self.fail_when = fail_when
        self._cond = threading.Condition()
        self._queue: collections.deque[_Write] = collections.deque()
        self._done: collections.deque[_Write] = collections.deque()  # to deliver, in order
        self._busy = False  # a batch is being written
        self._changes = 0  # changes queued, being written or not yet delivered
        # Callers waiting for their turn to build a change (changes_idle), first come
        # first served, and the one woken whose coroutine has not run yet.
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._turn: asyncio.Future[None] | None = None
        # The event loop that last queued a write or waited for a turn: it is told of
        # every batch written too, so that writes of a loop that has closed since (a
        # test's asyncio.run; a task cancelled as it shut down) are delivered there and
        # their changes hold no later caller back.
        self._home: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._wstore: Store | None = None
        self._closed = False
        self.batches = 0  # committed or failed, for the tests and the metrics
        self.largest_batch = 0

    # -- the event loop's side --------------------------------------------------

    def submit(
        self,
        write: Callable[[Store], object],
        apply: Callable[[], None] | None = None,
        change: bool = False,
    ) -> asyncio.Future[None]:
        """Queue `write`; the future resolves once it is committed and `apply` has run
        (on this event loop), or raises StoreUnavailable with nothing applied."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        item = _Write(write, apply, future, change)
        self._home = loop
        with self._cond:
            if self._closed:
                raise StoreUnavailable("the store is closing")
            if len(self._queue) >= MAX_QUEUED:
                raise StoreUnavailable(f"{MAX_QUEUED} writes already wait for the disk")
            self._start()
            self._queue.append(item)
            if change:
                self._changes += 1
            self._cond.notify()
        return future

    async def changes_idle(self) -> None:
        """Wait for this caller's turn to build a state change: none pending, and the
        callers that came first served. Only the first waiter is woken when the pending
        change is delivered (waking them all, while each change is written alone, cost
        O(waiters) per change: 500 nodes reporting 4,000 parts running held a core for
        seconds). The caller queues its change before it next yields; if it queues none,
        the turn passes to the next waiter once it yields."""
        if not self._changes and not self._waiters and self._turn is None:
            return
        loop = asyncio.get_running_loop()
        self._home = loop
        if self._changes and self._done:
            self.deliver()  # written for a loop that closed before it could deliver them
            if not self._changes and not self._waiters and self._turn is None:
                return
        again = False
        while True:
            turn: asyncio.Future[None] = loop.create_future()
            if again:  # woken, but a change got in first: keep this caller's place
                self._waiters.appendleft(turn)
            else:
                self._waiters.append(turn)
            self._wake_next()
            try:
                await turn
            except asyncio.CancelledError:
                if self._turn is turn:  # woken, then cancelled: the turn goes on
                    self._turn = None
                    self._wake_next()
                raise
            if self._turn is turn:
                self._turn = None
            if not self._changes:
                loop.call_soon(self._wake_next)  # if this caller queues no change
                return
            again = True

    def _wake_next(self) -> None:
        """Give the turn to the first waiter still waiting, if no change is pending and
        no turn is out. Waiters of an event loop that has closed are dropped."""
        turn = self._turn
        if turn is not None and turn.get_loop().is_closed():
            self._turn = turn = None
        if self._changes or turn is not None:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done() or waiter.get_loop().is_closed():
                continue  # cancelled, or its loop is gone
            waiter.set_result(None)
            self._turn = waiter
            return

    def settle(self) -> None:
        """Before a synchronous state change: wait (blocking) for the pending changes to
        be committed, and apply them. Returns at once when none is pending, as always
        outside the daemon (nothing queued) and nearly always inside it."""
        if not self._changes:
            return
        with self._cond:
            while self._queue or self._busy:
                self._cond.wait()
        self.deliver()

    def deliver(self) -> None:
        """Apply every committed write, and resolve every finished one, in commit order."""
        while True:
            with self._cond:
                if not self._done:
                    return
                item = self._done.popleft()
            try:
                if item.error is None and item.apply is not None:
                    item.apply()
            except Exception:  # a bug: the write is committed; the next load reads it
                log.exception("applying a committed write failed")
            finally:
                if item.change:
                    self._changes -= 1
                    if not self._changes:
                        self._wake_next()
            future = item.future
            # A closed loop's future cannot be resolved (its callbacks cannot be called):
            # raising here would leave the writes after it undelivered.
            if future is not None and not future.done() and not future.get_loop().is_closed():
                if item.error is None:
                    future.set_result(None)
                else:
                    future.set_exception(item.error)
                    future.exception()  # a caller gone (cancelled) must not log it unread

    def close(self) -> None:
        """Write what is queued, stop the thread, deliver what is left (at shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        self.deliver()
        if self._wstore is not None:
            self._wstore.close()

    # -- the writer's thread ---------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._wstore = self.store.open_writer()
            self._thread = threading.Thread(
                target=self._run, name="schedulerd-group-commit", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                self._busy = True
            error = self._commit(batch)
            loops = set()
            with self._cond:
                for item in batch:
                    item.error = error
                    self._done.append(item)
                    if item.future is not None:
                        loops.add(item.future.get_loop())
                self._busy = False
                self.batches += 1
                self.largest_batch = max(self.largest_batch, len(batch))
                self._cond.notify_all()
            home = self._home
            if home is not None:
                loops.add(home)
            for loop in loops:
                with contextlib.suppress(RuntimeError):  # a closed loop: close() delivers
                    loop.call_soon_threadsafe(self.deliver)

    def _commit(self, batch: list[_Write]) -> StoreUnavailable | None:
        store = self._wstore
        assert store is not None
        try:
            with store.transaction():
                for item in batch:
                    item.write(store)
                if self.fail_when is not None and self.fail_when.exists():
                    raise StoreUnavailable(f"failpoint store-commit-fail ({self.fail_when})")
        except StoreUnavailable as e:
            return e
        except Exception as e:  # a write that raised: the whole batch is rolled back
            log.exception("a group commit failed")
            return StoreUnavailable(f"cannot write to {store.path}: {e}")
        return None
