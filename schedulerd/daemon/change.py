"""One state change: check, commit, then apply (ARCHITECTURE: Nomad's plan applier).

Every path that changes jobs or nodes (a plan, a cancel, a drain, an agent's report,
a node's registration or timeout, a forget) works on *copies* of the live records,
taken through a `Change`. `commit()` writes every copy and event in one SQLite
transaction and only then copies them onto the live records, drops ended jobs from
memory and tells the listeners; the commands for agents are returned to be sent
after that. A failed write (disk full) raises `StoreUnavailable` from `commit()` and
leaves memory exactly as it was: the copies are dropped, no command is sent.

`await commit_async()` does the same through the group writer (store/group.py): the
write shares one transaction with whatever else is queued (submissions, mostly), off
the event loop, and memory follows in commit order once it is durable. One change
that reads live records is pending at a time (docs/group-commit.md): an async caller
first awaits `state.writer.changes_idle()`, and building a `Change` settles (blocking)
any change still pending, so that no change is built on a record another is about
to replace.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING

from schedulerd.daemon.commands import Outbox
from schedulerd.store import (
    EventRecord,
    FenceRecord,
    JobRecord,
    JobWrite,
    NodeRecord,
    PartRecord,
)

if TYPE_CHECKING:
    from schedulerd.daemon.state import ClusterState


def clone_part(p: PartRecord) -> PartRecord:
    return replace(
        p,
        gpu_indices=list(p.gpu_indices),
        gpu_uuids=list(p.gpu_uuids),
        workers=dict(p.workers),
        releasing=list(p.releasing),
    )


def clone_job(j: JobRecord) -> JobRecord:
    # Hand-made, not deepcopy: a plan of a thousand starts copies a thousand jobs.
    return replace(
        j, command=list(j.command), env=dict(j.env), parts=[clone_part(p) for p in j.parts]
    )


# A job's stored fields: its row. Its parts are rows of their own, compared one by one.
_JOB_FIELDS = tuple(f.name for f in fields(JobRecord) if f.name != "parts")


def job_write(live: JobRecord | None, copy: JobRecord) -> JobWrite:
    """What of `copy` differs from `live` (what is stored): its row if any field
    changed, its new or changed parts, and those it no longer has. A report on one
    part of a 250-part job writes that part, not 250 (issue 15)."""
    if live is None:
        return JobWrite(copy, True, copy.parts)
    row = any(getattr(copy, f) != getattr(live, f) for f in _JOB_FIELDS)
    # A part is (attempt, node, rank), as stored: a node may hold a part lost with it and
    # the part the job grew there later, in the same attempt (docs/store-writes.md).
    stored = {_part_key(p): p for p in live.parts}
    parts = [p for p in copy.parts if stored.get(_part_key(p)) != p]
    # A part of this attempt gone from the copy is gone (a requeue starts a new
    # attempt: the old attempt's parts stay stored, as its history).
    kept = {(p.node, p.node_rank) for p in copy.parts if p.attempt == copy.attempt}
    dropped = [
        (p.node, p.node_rank)
        for p in live.parts
        if p.attempt == copy.attempt and (p.node, p.node_rank) not in kept
    ]
    return JobWrite(copy, row, parts, dropped)


def _part_key(p: PartRecord) -> tuple[int, str, int]:
    return (p.attempt, p.node, p.node_rank)


def clone_node(n: NodeRecord) -> NodeRecord:
    return replace(n, gpus=list(n.gpus), fences=[replace(f) for f in n.fences])


class Change:
    def __init__(self, state: ClusterState) -> None:
        state.writer.settle()  # a change pending in the group writer is applied first
        self.state = state
        self.now = state.clock()
        self._jobs: dict[int, tuple[JobRecord | None, JobRecord]] = {}
        self._nodes: dict[str, tuple[NodeRecord | None, NodeRecord]] = {}
        self._forget: list[str] = []
        self._events: list[EventRecord] = []
        self.out: Outbox = []  # commands to send once committed

    # -- working copies -----------------------------------------------------

    def job(self, live: JobRecord) -> JobRecord:
        """The working copy of a live (or just loaded) job; the same copy every time."""
        entry = self._jobs.get(live.id)
        if entry is None:
            entry = (live, clone_job(live))
            self._jobs[live.id] = entry
        return entry[1]

    def touched_job(self, job_id: int) -> JobRecord | None:
        entry = self._jobs.get(job_id)
        return None if entry is None else entry[1]

    def node(self, name: str) -> NodeRecord:
        entry = self._nodes.get(name)
        if entry is None:
            live = self.state.nodes[name]
            entry = (live, clone_node(live))
            self._nodes[name] = entry
        return entry[1]

    def put_node(self, node: NodeRecord) -> NodeRecord:
        """A node record as it will be: new, or replacing the live one wholesale."""
        self._nodes[node.name] = (self.state.nodes.get(node.name), node)
        return node

    def forget_node(self, name: str) -> None:
        self._nodes.pop(name, None)
        self._forget.append(name)

    def event(self, job_id: int, kind: str, message: str) -> None:
        self._events.append(EventRecord(self.now, job_id, kind, message))

    def _current_node(self, name: str) -> NodeRecord | None:
        entry = self._nodes.get(name)
        return entry[1] if entry is not None else self.state.nodes.get(name)

    def fence(self, node: str, gpus: list[int], job_id: int, attempt: int, reason: str) -> None:
        """Hold these GPUs until the node says the part is gone (docs/fencing.md)."""
        if self._current_node(node) is None or not gpus:
            return
        record = self.node(node)
        # One fence per GPU and part: a GPU fenced for two old parts (a lost attempt and
        # a part unknown to the daemon) stays fenced until both are known gone.
        have = {(f.gpu_index, f.job_id, f.attempt) for f in record.fences}
        for gpu in gpus:
            if (gpu, job_id, attempt) not in have:
                record.fences.append(FenceRecord(gpu, job_id, attempt, self.now, reason))

    def unfence(self, node: str, job_id: int, attempt: int) -> None:
        # The node as this change has it: a fence set earlier in the same change (another
        # report of a batch, daemon/reports.py) is lifted too.
        current = self._current_node(node)
        if current is None or not any(
            (f.job_id, f.attempt) == (job_id, attempt) for f in current.fences
        ):
            return
        record = self.node(node)
        record.fences = [f for f in record.fences if (f.job_id, f.attempt) != (job_id, attempt)]

    # -- commit, then apply ---------------------------------------------------

    def commit(self) -> Outbox:
        """Write on the event loop's connection, now; then apply."""
        if self.writes:
            self.state.store.save_change(*self._rows())
        self._apply()
        out, self.out = self.out, []
        return out

    async def commit_async(self) -> Outbox:
        """Write through the group writer, then apply (in commit order, on the event
        loop, even if this caller is cancelled meanwhile). The write is queued before
        this coroutine first yields: await it right after building the change."""
        if self.writes:
            jobs, events, nodes, forget = self._rows()
            await self.state.writer.submit(
                lambda store: store.save_change(jobs, events, nodes, forget),
                self._apply,
                change=True,
            )
        else:
            self._apply()
        out, self.out = self.out, []
        return out

    @property
    def writes(self) -> bool:
        """Something to write: committing it is a transaction."""
        return bool(self._jobs or self._nodes or self._forget or self._events)

    def _rows(self) -> tuple[list[JobWrite], list[EventRecord], list[NodeRecord], list[str]]:
        return (
            [job_write(live, copy) for live, copy in self._jobs.values()],
            self._events,
            [copy for _, copy in self._nodes.values()],
            self._forget,
        )

    def _apply(self) -> None:
        """Committed: now, and only now, memory follows."""
        state = self.state
        for live_node, copy_node in self._nodes.values():
            if live_node is None:
                state.nodes[copy_node.name] = copy_node
            else:
                # Heartbeats that came while the change was being written count.
                copy_node.last_seen = max(copy_node.last_seen, live_node.last_seen)
                live_node.__dict__.update(copy_node.__dict__)
                state.nodes[copy_node.name] = live_node
        for name in self._forget:
            state.nodes.pop(name, None)
        changed = []
        for live_job, copy_job in self._jobs.values():
            target = copy_job if live_job is None else live_job
            if live_job is not None:
                live_job.__dict__.update(copy_job.__dict__)
            if target.state.ended:
                state.jobs.pop(target.id, None)
            else:
                state.jobs[target.id] = target
            state.parts_by_node.put(target, held=not target.state.ended)
            changed.append(target)
        state.metrics.committed(self._events, {job.id: job for job in changed})
        for job in changed:
            state.notify(job)
