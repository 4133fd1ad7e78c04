"""The jobs of one pool's snapshot, kept from cycle to cycle (issue 15: the incremental
cycle): which jobs changed since the last cycle, and the running jobs indexed by
consumer and by node, updated from those changes rather than built again.

`JobsIndex.update` finds what changed: from the snapshot's `Changes` when the caller
sent them and they apply to the snapshot this index saw last (checked by generation
and by count), else by comparing every job with the one kept (by identity: the
snapshot's jobs are frozen values). It keeps `RunningIndex` up to date, and the waiting
jobs that came and went for queues.PoolQueues (`take_waiting`). Everything here is
derived from the cycles' inputs: a cache, never a second source of truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import count
from typing import TypeVar

from schedulerd.core.model import ConsumerPath, Job, JobId, JobPhase, NodeName, Snapshot


def _on_nodes(j: Job) -> dict[NodeName, int]:
    """The GPUs a job holds, per node."""
    on: dict[NodeName, int] = {}
    for s in j.held:
        on[s.node] = on.get(s.node, 0) + 1
    return on


K = TypeVar("K")


def _bump(d: dict[K, int], k: K, n: int) -> None:
    """Add n to d[k]; a count back at 0 is dropped (as a pass would not find it)."""
    if not n:
        return
    v = d.get(k, 0) + n
    if v:
        d[k] = v
    else:
        del d[k]


class RunningIndex:
    """The running jobs, by id, by consumer and by node, with what a cycle sums over
    them; what each field holds is what a pass over the running jobs would find."""

    def __init__(self) -> None:
        self.jobs: dict[JobId, Job] = {}
        self.by_consumer: dict[ConsumerPath, dict[JobId, Job]] = {}
        self.held_by: dict[ConsumerPath, int] = {}  # GPUs held, per consumer
        self.demand: dict[ConsumerPath, int] = {}  # gpus_max, per consumer
        self.on: dict[NodeName, dict[JobId, Job]] = {}  # jobs holding GPUs of a node
        self.held_on: dict[NodeName, int] = {}  # GPUs held per node
        self.taken: dict[NodeName, dict[int, int]] = {}  # node -> GPU index -> holders
        self.timed_on: dict[NodeName, int] = {}  # GPUs held by jobs with a time limit
        self.elastic: dict[JobId, Job] = {}
        # Reclaim's (reclaim.Planner): jobs with GPUs on their way back, and the jobs
        # holding GPUs that are not stopping, by consumer and by node, with the GPUs
        # each would give back and holds per node.
        self.releasing: dict[JobId, Job] = {}
        self.movable: dict[ConsumerPath, dict[JobId, Job]] = {}
        self.gives: dict[ConsumerPath, int] = {}
        self.nodes_of: dict[ConsumerPath, dict[NodeName, int]] = {}  # node -> jobs there
        self.count_on: dict[NodeName, dict[JobId, tuple[ConsumerPath, JobId, int]]] = {}

    def add(self, j: Job) -> None:
        self._change(j, 1)

    def remove(self, j: Job) -> None:
        self._change(j, -1)

    def _change(self, j: Job, sign: int) -> None:
        c, jid = j.consumer, j.id
        if sign > 0:
            self.jobs[jid] = j
            self.by_consumer.setdefault(c, {})[jid] = j
        else:
            del self.jobs[jid]
            mine = self.by_consumer[c]
            del mine[jid]
            if not mine:
                del self.by_consumer[c]
        _bump(self.held_by, c, sign * len(j.held))
        _bump(self.demand, c, sign * j.gpus_max)
        on = _on_nodes(j)
        for node, n in on.items():
            _bump(self.held_on, node, sign * n)
            if j.time_limit_s is not None:
                _bump(self.timed_on, node, sign * n)
            jobs_here = self.on.setdefault(node, {})
            if sign > 0:
                jobs_here[jid] = j
            else:
                del jobs_here[jid]
                if not jobs_here:
                    del self.on[node]
        for s in j.held:
            taken = self.taken.setdefault(s.node, {})
            _bump(taken, s.index, sign)
            if not taken:
                del self.taken[s.node]
        if j.gpus_max > j.gpus_min:
            if sign > 0:
                self.elastic[jid] = j
            else:
                del self.elastic[jid]
        if not j.held:
            return
        if j.incoming:
            if sign > 0:
                self.releasing[jid] = j
            else:
                del self.releasing[jid]
        if j.stopping:
            return
        if sign > 0:
            self.movable.setdefault(c, {})[jid] = j
        else:
            mine = self.movable[c]
            del mine[jid]
            if not mine:
                del self.movable[c]
        _bump(self.gives, c, sign * (len(j.held) - len(j.releasing)))
        where = self.nodes_of.setdefault(c, {})
        for node, n in on.items():
            _bump(where, node, sign)
            here = self.count_on.setdefault(node, {})
            if sign > 0:
                here[jid] = (c, jid, n)
            else:
                del here[jid]
                if not here:
                    del self.count_on[node]
        if not where:
            del self.nodes_of[c]


class JobsIndex:
    """One pool's jobs as the last cycle saw them, and its running jobs' index."""

    def __init__(self) -> None:
        self.jobs: dict[JobId, Job] = {}
        self.rank: dict[JobId, int] = {}  # the order of the snapshot's jobs
        self.running = RunningIndex()
        self.generation: int | None = None
        self._next = count()
        self.asked: dict[str, int] = {}  # jobs per pool or GPU type asked for (Job.pool)
        self._seen: Snapshot | None = None  # the snapshot it was brought to last
        self._waiting: list[tuple[Job, bool]] = []  # for take_waiting

    def take_waiting(self) -> list[tuple[Job, bool]]:
        """The waiting jobs' changes since the last call, in order: (a job that came,
        True) or (one that went, as it was, False); a changed one went and came."""
        out, self._waiting = self._waiting, []
        return out

    def update(self, snapshot: Snapshot) -> None:
        """Bring the index to `snapshot` (nothing to do if it was brought to it last)."""
        if snapshot is self._seen:
            return
        self._seen = None  # until done: a cycle cut short leaves it unknown
        self._update(snapshot)
        self._seen = snapshot

    def _update(self, snapshot: Snapshot) -> None:
        jobs = snapshot.jobs
        ch = snapshot.changes
        waiting = self._waiting
        if ch is not None and self.generation is not None and ch.since == self.generation:
            # New jobs come after the others (Changes), so they are the snapshot's last:
            # ranked in its order, not in the order the changes list them.
            new = {i for i, j in ch.jobs.items() if j is not None and i not in self.jobs}
            last = jobs[len(jobs) - len(new) :] if new else ()
            if len(last) == len(new) and all(j.id in new for j in last):
                for j in last:
                    self.rank[j.id] = next(self._next)
                self._apply(ch.jobs.items(), waiting)
                if len(self.jobs) == len(jobs):
                    self.generation = ch.generation
                    return
        # No changes, or ones that do not apply here: compare every job.
        self.generation = ch.generation if ch is not None else None
        self._next = count()
        self.rank = dict(zip((j.id for j in jobs), self._next, strict=False))
        kept = self.jobs
        changed = [j for j in jobs if kept.get(j.id) is not j]
        new_ids = sum(1 for j in changed if j.id not in kept)
        if len(kept) + new_ids != len(jobs):  # some are gone
            now = {j.id for j in jobs}
            self._apply([(i, None) for i in kept if i not in now], waiting)
        self._apply([(j.id, j) for j in changed], waiting)

    def _apply(
        self,
        changes: Iterable[tuple[JobId, Job | None]],
        waiting: list[tuple[Job, bool]],
    ) -> None:
        kept, running, rank = self.jobs, self.running, self.rank
        for jid, new in changes:
            old = kept.get(jid)
            if old is new:
                continue
            if old is not None:
                if old.pool is not None:
                    self._ask(old.pool, -1)
                if old.phase is JobPhase.RUNNING:
                    running.remove(old)
                else:
                    waiting.append((old, False))
            if new is None:
                del kept[jid]
                rank.pop(jid, None)
                continue
            kept[jid] = new
            if new.pool is not None:
                self._ask(new.pool, 1)
            if jid not in rank:
                rank[jid] = next(self._next)
            if new.phase is JobPhase.RUNNING:
                running.add(new)
            else:
                waiting.append((new, True))

    def _ask(self, pool: str, n: int) -> None:
        left = self.asked.get(pool, 0) + n
        if left:
            self.asked[pool] = left
        else:
            del self.asked[pool]

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]
