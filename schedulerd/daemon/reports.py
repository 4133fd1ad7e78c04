"""Agents' reports, recorded together: the reports of many nodes in one change, one
transaction (docs/group-commit.md, "Reports from many nodes in one change").

A report is a state change: it reads live records (the job, its parts, the node's
fences), so it waits for its turn like every change (`GroupWriter.changes_idle`), and
written one at a time, the 4,000 "running" reports of 500 nodes after a fill took 4,000
turns and commits (5.3 s; 47 changes and 2.2 s together, docs/benchmarks.md). Here the
reports that queue while a change is being written wait for one turn together: when it
comes, all of them (at most MAX_REPORTS) are built into one
`Change`, in the order they came, and committed as one write. A change holding several
reports is built as a node's registration builds the reports it carries: each reads the
records the reports before it changed (`Change.touched_job`), so the result is the one of
writing them one after another (tests/test_daemon_reports.py checks it against that).

What each caller is told is what it was told alone: recorded (and its commands sent), or
`StoreUnavailable` when the batch's commit failed, so that its agent sends the report again
when it registers. A report whose building, or the writing of whose rows, raises (a bug,
not the disk) must not take the reports of other nodes with it: the batch is then built
again one report per change, and only that one fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from schedulerd.daemon import nodes
from schedulerd.daemon.change import Change
from schedulerd.daemon.commands import Outbox
from schedulerd.daemon.state import ClusterState
from schedulerd.store import StoreUnavailable

log = logging.getLogger(__name__)

STOPPING = "the daemon is stopping: the report is not recorded"
# Retried one by one after their batch failed, reports stop being tried after this many
# refusals of the store in a row (the disk is down): the rest fail with the last one.
GIVE_UP_AFTER = 3

# At most this many reports in one change: a bound on one transaction's size and on the
# time the event loop spends building it (~40 µs a report).
MAX_REPORTS = 512


class SupersededReport(Exception):
    """The report came on a session its node has replaced since (the agent registered
    again while the report waited): dropped, as that registration said what is true now.
    Built after it, a stale "running" could fence GPUs for a part the agent has dropped
    and been told to forget: fenced until the node next registers."""


@dataclass
class _Waiting:
    node: str
    report: nodes.PartReport
    done: asyncio.Future[None]
    epoch: int | None  # the session it came on; None: whichever is current


class ReportBatcher:
    """Records agents' reports, those that wait at the same time in one change."""

    def __init__(self, state: ClusterState, deliver: Callable[[Outbox], None]) -> None:
        self.state = state
        self.deliver = deliver  # sends a committed change's commands to the agents
        self._queue: list[_Waiting] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.changes = 0  # changes committed (tests, benchmarks)
        self.transactions = 0  # those of them that wrote something
        self.largest = 0  # most reports in one change

    async def record(self, node: str, report: nodes.PartReport, epoch: int | None = None) -> None:
        """Return once the report is committed and applied, and its commands delivered.
        Raise, having changed nothing: StoreUnavailable (the store, or the daemon
        stopping), SupersededReport (the node's session `epoch` was replaced before its
        turn), or what building or writing it raised (a bug); or, its change committed,
        what sending its commands raised."""
        if self._stopping:
            raise StoreUnavailable(STOPPING)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(node, report, loop.create_future(), epoch)
        self._queue.append(waiting)
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._task = loop.create_task(self._drain())
        await waiting.done

    async def _drain(self) -> None:
        while self._queue:
            await self.state.writer.changes_idle()
            batch = self._queue[:MAX_REPORTS]
            del self._queue[: len(batch)]
            # Callers of an event loop that has closed (tests run several) wait no more.
            batch = [w for w in batch if not w.done.get_loop().is_closed()]
            if not batch:  # stop() answered them while this waited for the turn
                continue
            try:
                await self._record(batch)
            except Exception as e:  # a bug: still, no caller may wait forever
                log.exception("recording %d agents' reports failed", len(batch))
                for w in batch:
                    _settle(w.done, e)
            except BaseException:  # cancelled: tell them all the same
                for w in batch:
                    _settle(w.done, StoreUnavailable(STOPPING))
                raise

    async def _record(self, batch: list[_Waiting]) -> None:
        """Build the batch into one change and commit it, this caller holding the turn."""
        try:
            ch, ends, stale = self._build(batch)
        except Exception:
            log.exception("building %d reports in one change failed: one by one", len(batch))
            await self._one_by_one(batch)
            return
        await self._commit(ch, batch, ends, stale)

    def stop(self) -> None:
        """At shutdown, after the servers stop and before the writer closes: the reports
        still waiting for their turn are refused (their agents send them again when they
        register), and so is any that comes later. A batch being written is left to the
        writer, which writes what is queued when it closes; its callers, whose streams are
        gone, may be told it was not recorded when the loop ends (harmless: an agent's
        registration says again what its parts are)."""
        self._stopping = True
        queued, self._queue = self._queue, []
        for w in queued:
            _settle(w.done, StoreUnavailable(STOPPING))

    def _build(self, batch: list[_Waiting]) -> tuple[Change, list[int], set[int]]:
        """The change; where each report's commands end in its outbox (a report appends
        its own and touches no other's); which reports came on a superseded session."""
        ch = Change(self.state)
        ends, stale = [], set()
        for i, w in enumerate(batch):
            node = self.state.nodes.get(w.node)
            if w.epoch is not None and (node is None or node.epoch != w.epoch):
                stale.add(i)
            else:
                nodes.add_report(ch, w.node, w.report)
            ends.append(len(ch.out))
        return ch, ends, stale

    async def _commit(
        self, ch: Change, batch: list[_Waiting], ends: list[int], stale: set[int]
    ) -> None:
        # Queued before this first yields: nothing else builds on the records meanwhile.
        wrote = ch.writes
        try:
            out = await ch.commit_async()
        except Exception as e:
            # Nothing changed (a failed batch is rolled back whole). Alone, each report
            # would have been a transaction of its own: so that one that cannot be
            # written (a bug in its rows, in the writer's SQL) or a disk that failed once
            # does not send every agent of the batch to register again, the reports are
            # tried again one per change, each failing or not on its own.
            if len(batch) == 1:
                _settle(batch[0].done, e)
                return
            log.warning("%d reports in one change not recorded (%s): one by one", len(batch), e)
            await self._one_by_one(batch, turn_held=False)
            return
        recorded = len(batch) - len(stale)
        self.changes += 1
        self.transactions += wrote
        self.largest = max(self.largest, recorded)
        # Each report's commands are sent apart, as they were alone: a send that raises
        # (a bug) fails that report's caller (its stream ends and its agent registers
        # again), not the commands of the others.
        start = 0
        for i, (w, end) in enumerate(zip(batch, ends, strict=True)):
            if i in stale:
                why = f"a report of {w.node} from session {w.epoch}, replaced since"
                _settle(w.done, SupersededReport(why))
                start = end
                continue
            try:
                self.deliver(out[start:end])
            except Exception as e:
                log.exception("sending the commands of a report of %s failed", w.node)
                _settle(w.done, e)
            else:
                _settle(w.done, None)
            start = end
        self.state.metrics.reports_recorded(recorded, transaction=wrote)

    async def _one_by_one(self, batch: list[_Waiting], *, turn_held: bool = True) -> None:
        refusals: list[StoreUnavailable] = []  # the store's, in a row
        for i, w in enumerate(batch):
            if len(refusals) >= GIVE_UP_AFTER:
                # The disk, not one report: the rest would fail the same way, each
                # logging it; they fail now with the last refusal.
                _settle(w.done, refusals[-1])
                continue
            if i or not turn_held:
                await self.state.writer.changes_idle()
            try:
                ch, ends, stale = self._build([w])
            except Exception as e:
                _settle(w.done, e)
                continue
            await self._commit(ch, [w], ends, stale)
            error = w.done.exception() if w.done.done() and not w.done.cancelled() else None
            refusals = [*refusals, error] if isinstance(error, StoreUnavailable) else []


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    """Tell one caller; one that went away (its stream cancelled) is not waiting."""
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
        # Retrieved here so that a caller that went away leaves no "never retrieved" log.
        done.exception()
