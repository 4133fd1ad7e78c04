"""The audit trail: who did what (identity, action, object, result).

Recorded: every refusal, and every allowed change (submit, cancel, policy, nodes,
tokens, experiments, agent connections). Reads that succeed are not: they change
nothing and would drown the trail.

The servicer's gate names the caller and the object; the result is only known when
the call ends, so the call wrapper (daemon/calls.py) finishes the record. Records
are written in batches, one transaction every FLUSH_S, so that auditing does not
double the commits of a submission storm; a crash of the machine may lose the last
FLUSH_S of records (docs/security.md), never a change itself. In the daemon a batch
goes through the group writer (store/group.py), off the event loop: written on the
loop, a batch held every call for tens of milliseconds under a submission storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from schedulerd.auth.authorize import Action, Target
from schedulerd.auth.identity import Identity, Kind
from schedulerd.auth.peer import parse_peer
from schedulerd.store import Store, StoreUnavailable
from schedulerd.store.group import GroupWriter
from schedulerd.store.security import AuditEntry, SecurityStore

log = logging.getLogger("schedulerd.audit")

FLUSH_S = 0.2
# Past this many unwritten records the trail writes at once, whatever the timer.
MAX_BUFFERED = 5000
# Refusals recorded one by one per identity and window; past that they are counted, and
# the count recorded when the window ends (a client spraying bad credentials must not
# grow the store 2 MB every 10 s).
REFUSALS_PER_WINDOW = 20
WINDOW_S = 10.0
# The newest records kept; older ones are dropped as new ones come.
KEEP_RECORDS = 1_000_000

CHANGES = frozenset(
    {
        Action.SUBMIT,
        Action.CANCEL_JOB,
        Action.APPLY_POLICY,
        Action.DRAIN_NODE,
        Action.UNDRAIN_NODE,
        Action.FORGET_NODE,
        Action.CREATE_TOKEN,
        Action.REVOKE_TOKEN,
        Action.CREATE_EXPERIMENT,
        Action.STOP_EXPERIMENT,
        Action.CREATE_SERVICE,
        Action.UPDATE_SERVICE,
        Action.DELETE_SERVICE,
    }
)
# Long-lived streams: recorded when they are let in, not when they end.
AT_ENTRY = frozenset({Action.CONNECT_NODE})


@dataclass
class _Pending:
    who: Identity
    action: Action
    target: Target
    notes: list[str] = field(default_factory=list)


_current: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar(
    "schedulerd_audit", default=None
)
# The calling peer's address (no port): callers without a credential are told apart by it
# when their refusals are counted, so that one noisy client does not hide the others.
_peer: contextvars.ContextVar[str] = contextvars.ContextVar("schedulerd_peer", default="")


class AuditTrail:
    def __init__(
        self,
        store: SecurityStore,
        clock: Callable[[], float] = time.time,
        writer: GroupWriter | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        # Where batches are written when an event loop runs (the daemon's); without it,
        # or outside a loop, they are written here and now.
        self.writer = writer
        self._last: asyncio.Future[None] | None = None  # the last batch given to the writer
        self._buffer: list[AuditEntry] = []
        # How many records at the head of _buffer came back from failed batches: older
        # than every other one there (batches fail in the order they were given).
        self._kept = 0
        self._window_start = clock()
        self._refusals: dict[str, int] = {}  # identity label -> refusals this window
        self._written = 0

    def allowed(self, who: Identity, action: Action, target: Target) -> None:
        if action in AT_ENTRY:
            self._add(who, action, target.describe(), "ok", "")
        elif action in CHANGES:
            _current.set(_Pending(who, action, target))

    def note(self, text: str) -> None:
        """More about the object, known only once the change is made (a job's id)."""
        pending = _current.get()
        if pending is not None:
            pending.notes.append(text)

    def refused(self, who: Identity, action: Action, target: Target, code: str, why: str) -> None:
        if self._count_refusal(who):
            self._add(who, action, target.describe(), code, why)

    def refused_call(self, who: Identity, action: str, code: str, why: str) -> None:
        """A refusal before the action is known by the gate (a malformed request)."""
        if not self._count_refusal(who):
            return
        entry = AuditEntry(
            self.clock(), who.label, who.credential.value, action, "", code, why[:500]
        )
        self._append(entry)

    def set_peer(self, peer: str) -> None:
        _peer.set(_peer_host(peer))

    def begin_call(self) -> contextvars.Token[_Pending | None]:
        return _current.set(None)

    def end_call(self, token: contextvars.Token[_Pending | None], result: str, detail: str) -> None:
        pending = _current.get()
        try:
            _current.reset(token)
        except ValueError:
            # A stream closed by asyncio's async-generator finalizer runs this in another
            # context: nothing of this call is pending there (streams record at entry).
            return
        if pending is None:
            return
        obj = ", ".join(p for p in (pending.target.describe(), *pending.notes) if p)
        self._add(pending.who, pending.action, obj, result, detail)

    def _add(self, who: Identity, action: Action, obj: str, result: str, detail: str) -> None:
        entry = AuditEntry(
            self.clock(), who.label, who.credential.value, action.value, obj, result, detail[:500]
        )
        self._append(entry)

    def _append(self, entry: AuditEntry) -> None:
        self._buffer.append(entry)
        if len(self._buffer) >= MAX_BUFFERED:
            self.flush()

    def _count_refusal(self, who: Identity) -> bool:
        """Whether this refusal is recorded one by one (else only counted)."""
        now = self.clock()
        if now - self._window_start >= WINDOW_S:
            for label, n in self._refusals.items():
                if n > REFUSALS_PER_WINDOW:
                    extra = n - REFUSALS_PER_WINDOW
                    self._append(
                        AuditEntry(
                            now,
                            label,
                            "",
                            "(refusals)",
                            "",
                            "suppressed",
                            f"{extra} more refusals in {WINDOW_S:g} s, not recorded one by one",
                        )
                    )
            self._refusals.clear()
            self._window_start = now
        key = who.label if who.kind is not Kind.ANONYMOUS else f"anonymous@{_peer.get()}"
        n = self._refusals.get(key, 0) + 1
        self._refusals[key] = n
        return n <= REFUSALS_PER_WINDOW

    def flush(self) -> None:
        entries, self._buffer = self._buffer, []
        self._kept = 0
        if not entries:
            return
        self._written += len(entries)
        prune = self._written >= KEEP_RECORDS // 100
        if prune:
            self._written = 0
        if self.writer is not None and _loop_running():
            try:
                future = self.writer.submit(lambda store: _write(store, entries, prune))
            except StoreUnavailable as e:
                self._keep(entries, e)
                return
            future.add_done_callback(lambda f: self._written_or_kept(f, entries))
            self._last = future
            return
        try:
            _write(self.store.store, entries, prune)
        except StoreUnavailable as e:
            self._keep(entries, e)

    async def written(self) -> None:
        """Every record so far in the store (or kept for a retry, if the store failed):
        for a reader of the trail, to whom what happened just now is part of the answer.
        Batches commit in the order given, so the last one's commit covers the others."""
        self.flush()
        last = self._last
        if last is not None and not last.done():
            with contextlib.suppress(StoreUnavailable):
                if self.writer is not None and last.get_loop() is not asyncio.get_running_loop():
                    # Given by an event loop that closed before it was written (one
                    # asyncio.run after another): a write queued now commits after it.
                    last = self._last = self.writer.submit(lambda store: None)
                await asyncio.shield(last)

    def _written_or_kept(self, future: asyncio.Future[None], entries: list[AuditEntry]) -> None:
        if future.cancelled():
            return  # the daemon is stopping; the writer still writes what it was given
        error = future.exception()
        if isinstance(error, StoreUnavailable):
            self._keep(entries, error)
        elif error is not None:
            log.error("audit records not written: %s", error)

    def _keep(self, entries: list[AuditEntry], error: StoreUnavailable) -> None:
        # Keep them for the next try, but bounded: the store being full must not grow
        # the daemon's memory without end.
        log.error("audit records not written (%d kept): %s", len(entries), error)
        # After the records of the batches that failed before this one, before those
        # made since it was given (a later batch may be in the writer, failing too):
        # the trail keeps the order things happened in, and the bound drops the oldest.
        at = self._kept
        buffer = self._buffer[:at] + entries + self._buffer[at:]
        drop = max(0, len(buffer) - MAX_BUFFERED)
        self._buffer = buffer[drop:]
        self._kept = max(0, at + len(entries) - drop)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            if self._buffer:
                self.flush()


def _write(store: Store, entries: list[AuditEntry], prune: bool) -> None:
    security = SecurityStore(store)
    security.add_audit(entries)
    if prune:
        security.prune_audit(KEEP_RECORDS)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _peer_host(peer: str) -> str:
    """The caller's address without its port, as refusals are counted by (one entry per
    connection: parsing it on every call was a few % of a unary call's time)."""
    parsed = parse_peer(peer)
    return str(parsed[0]) if parsed else peer[:128]
