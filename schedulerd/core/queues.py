"""Each leaf's waiting jobs in its own order, kept between cycles (issue 15: the
incremental cycle).

A cycle used to group every waiting job by consumer and sort every leaf's queue again,
then walk each queue job by job. Here a `LeafQueue` is an immutable value: the leaf's
jobs in order (ordering.queue_order, the one rule), where each sits, and, per job size,
the places of the jobs of that size, so that admission can jump to the next job of a
size it has not refused yet instead of walking past thousands it would refuse
(decide._serve_jobs). `PoolQueues` keeps one per leaf from cycle to cycle and builds a
leaf's queue again only when what it is made of changed: its waiting jobs (compared by
identity: the snapshot's jobs are frozen values), the policy, and for the fairshare
order its users' running GPUs and the order of their usage.

Everything here is derived from the cycle's inputs: a cache, never a second source of
truth. Jobs are identified within a snapshot by id; `submit_seq` is unique per job (the
daemon uses the job's id), so a queue's order does not depend on the snapshot's order.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence, Set
from itertools import compress, count, repeat
from operator import attrgetter, is_, not_

from schedulerd.core.model import ConsumerPath, Job, JobId, JobPhase, Order, Policy
from schedulerd.core.ordering import queue_order, static_key


class LeafQueue:
    """One leaf's waiting jobs, first to be served first. Never changed once built."""

    __slots__ = ("at", "demand", "index", "jobs", "key", "timed")

    def __init__(self, jobs: list[Job], key: object = None) -> None:
        self.jobs = jobs
        self.index: dict[JobId, int] = {j.id: i for i, j in enumerate(jobs)}
        at: dict[int, list[int]] = defaultdict(list)
        for i, j in enumerate(jobs):
            at[j.gpus_min].append(i)  # j.gpus
        self.at: dict[int, list[int]] = dict(at)
        self.timed = [j for j in jobs if j.time_limit_s is not None]  # may backfill
        self.demand = sum(j.gpus_max for j in jobs)
        self.key = key  # what a fairshare order was built from (None for the others)

    def __len__(self) -> int:
        return len(self.jobs)

    def extended(self, more: list[Job]) -> LeafQueue:
        """This queue with `more` after its jobs, in that order: what building it from
        all the jobs would give when each of `more` comes after every job here (a burst
        of submissions). C-level copies: this queue stays as it was (the last plan's
        reasons may still read it)."""
        q = LeafQueue.__new__(LeafQueue)
        first = len(self.jobs)
        q.jobs = self.jobs + more
        q.index = self.index.copy()
        q.index.update(zip(map(_id, more), count(first)))
        at = {size: places.copy() for size, places in self.at.items()}
        for i, j in enumerate(more, first):
            at.setdefault(j.gpus_min, []).append(i)
        q.at = at
        q.timed = self.timed + [j for j in more if j.time_limit_s is not None]
        q.demand = self.demand + sum(j.gpus_max for j in more)
        q.key = self.key
        return q

    def next_at(self, start: int, refused: Set[int], skip: Container[JobId]) -> int | None:
        """The first place at or after `start` of a job whose size is not in `refused`
        and that is not in `skip`, or None."""
        best: int | None = None
        for size, places in self.at.items():
            if size in refused:
                continue
            k = bisect_left(places, start)
            while k < len(places) and self.jobs[places[k]].id in skip:
                k += 1
            if k < len(places) and (best is None or places[k] < best):
                best = places[k]
        return best


class Waiting(Sequence[Job]):
    """A leaf's queue less the jobs started this cycle: a view, not a copy (the cycle's
    later steps read the first few jobs of most queues, not every job)."""

    __slots__ = ("_gone_here", "gone", "queue")

    def __init__(self, queue: LeafQueue, gone: frozenset[JobId], gone_here: list[int]) -> None:
        self.queue = queue
        self.gone = gone
        self._gone_here = gone_here  # places of the started ones, sorted

    def __len__(self) -> int:
        return len(self.queue.jobs) - len(self._gone_here)

    def __iter__(self) -> Iterator[Job]:
        if not self._gone_here:
            return iter(self.queue.jobs)
        gone = self.gone
        return (j for j in self.queue.jobs if j.id not in gone)

    def __getitem__(self, i):  # type: ignore[no-untyped-def]  # Sequence's overloads
        if not self._gone_here:
            return self.queue.jobs[i]
        if isinstance(i, slice):
            return list(self)[i]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        for j in self:
            if i == 0:
                return j
            i -= 1
        raise IndexError(i)

    def __bool__(self) -> bool:
        return len(self) > 0

    def place(self, job_id: JobId) -> int:
        """1-based place of a job still waiting here."""
        at = self.queue.index[job_id]
        return at + 1 - bisect_left(self._gone_here, at)


def waiting_views(
    queues: Mapping[ConsumerPath, LeafQueue], started: Mapping[JobId, ConsumerPath]
) -> dict[ConsumerPath, Waiting]:
    """Each leaf's queue less the jobs `started` (each with its leaf), as they are now."""
    gone = frozenset(started)
    at: dict[ConsumerPath, list[int]] = defaultdict(list)
    for job_id, leaf in started.items():
        q = queues.get(leaf)
        if q is not None and job_id in q.index:
            at[leaf].append(q.index[job_id])
    return {leaf: Waiting(q, gone, sorted(at.get(leaf, ()))) for leaf, q in queues.items()}


class PoolQueues:
    """The waiting jobs of one pool's snapshot, by consumer, kept from cycle to cycle.
    `update` brings it to a new snapshot in time proportional to what changed (the
    waiting jobs that came and went: running.JobsIndex finds them)."""

    def __init__(self) -> None:
        self._policy: Policy | None = None
        self._members: dict[ConsumerPath, dict[JobId, Job]] = {}
        self._dirty: set[ConsumerPath] = set()
        self.queues: dict[ConsumerPath, LeafQueue] = {}
        # Waiting jobs of consumers that are not leaves of the policy: they only get a reason.
        self.others: dict[ConsumerPath, dict[JobId, Job]] = {}
        self._users: dict[ConsumerPath, tuple[str, ...]] = {}  # a fairshare leaf's users, sorted
        # Fairshare leaves with waiting jobs, and what their order was built from.
        self._fair: dict[ConsumerPath, Order] = {}
        # Since the last update, per leaf: the waiting jobs that came, while none went
        # (its queue may then be extended rather than built again: `_appended`), and
        # the leaves where some went.
        self._came: dict[ConsumerPath, list[Job]] = {}
        self._rebuild: set[ConsumerPath] = set()

    def update(
        self,
        policy: Policy,
        changes: Iterable[tuple[Job, bool]],
        running_by_leaf: Mapping[ConsumerPath, Mapping[JobId, Job]],
        usage_by_leaf: Mapping[ConsumerPath, Mapping[str, float]],
    ) -> None:
        """`changes`: (waiting job that came, True) or (one that went, False), in order."""
        dirty = self._dirty
        if policy is not self._policy:
            self._policy = policy
            self.queues = {}
            self.others = {}
            self._users = {}
            self._fair = {}
            dirty.update(self._members)
        members_of = self._members
        came_to = self._came
        for j, came in changes:
            c = j.consumer
            dirty.add(c)
            if came:
                members_of.setdefault(c, {})[j.id] = j
                more = came_to.get(c)
                if more is not None:
                    more.append(j)
                elif c not in self._rebuild:
                    came_to[c] = [j]
            else:
                del members_of[c][j.id]
                came_to.pop(c, None)
                self._rebuild.add(c)
        for c in dirty:
            members = members_of.get(c)
            if not members:
                members_of.pop(c, None)
                self.queues.pop(c, None)
                self.others.pop(c, None)
                self._fair.pop(c, None)
            elif policy.is_leaf(c):
                q = self.queues.pop(c, None)  # built below
                more = came_to.get(c)
                if q is not None and more is not None:
                    appended = _appended(q, more, policy.consumers[c].order)
                    if appended is not None:
                        self.queues[c] = appended
                self._users.pop(c, None)
                self.others.pop(c, None)
            else:
                self.others[c] = dict(members)
                self.queues.pop(c, None)
                self._fair.pop(c, None)
        # Leaves to look at: those whose jobs changed, and fairshare ones (their order
        # depends on their users' running GPUs and usage).
        look = {c for c in dirty if c in members_of and policy.is_leaf(c)}
        look.update(self._fair)
        self._dirty = set()
        self._came = {}
        self._rebuild = set()
        for c in look:
            members = members_of[c]
            order = policy.consumers[c].order
            q = self.queues.get(c)
            key = None
            runs = running_by_leaf.get(c, {}).values()
            used = usage_by_leaf.get(c, {})
            if order is Order.FAIRSHARE:
                self._fair[c] = order
                users = self._users.get(c)
                if users is None:
                    users = self._users[c] = tuple(sorted({j.user for j in members.values()}))
                key = _fairshare_key(users, runs, used)
            else:
                self._fair.pop(c, None)
            if q is not None and q.key == key:
                continue
            jobs = queue_order(order, members.values(), runs, used)
            self.queues[c] = LeafQueue(jobs, key)


def _appended(q: LeafQueue, more: list[Job], order: Order) -> LeafQueue | None:
    """`q` with the jobs that came since it was built, if its order places each job by
    the job alone and every one of them goes after all of `q`; else None (build it)."""
    key = static_key(order)
    if key is None or q.key is not None:
        return None
    more = sorted(more, key=key)
    if q.jobs and key(more[0]) <= key(q.jobs[-1]):
        return None
    return q.extended(more)


def _fairshare_key(
    users: tuple[str, ...], running: Iterable[Job], usage: Mapping[str, float]
) -> tuple[object, ...]:
    """What a fairshare queue's order depends on besides its jobs (`users`: theirs,
    sorted): each user's running GPUs, and the order (with ties) of the users' decayed
    usage, which decays for all alike from cycle to cycle and so seldom reorders them."""
    turns: dict[str, int] = {}
    for j in running:
        turns[j.user] = turns.get(j.user, 0) + len(j.held)
    used = [usage.get(u, 0.0) for u in users]
    rank = {v: i for i, v in enumerate(sorted(set(used)))}
    return (tuple(turns.get(u, 0) for u in users), tuple(rank[v] for v in used))


def split_phases(jobs: Sequence[Job]) -> tuple[list[Job], list[Job]]:
    """(running, pending), each in the snapshot's order; C-level passes (a Python loop
    over 100,000 jobs is a good part of a cycle's budget)."""
    running = list(map(is_, map(_phase, jobs), repeat(JobPhase.RUNNING)))
    return list(compress(jobs, running)), list(compress(jobs, map(not_, running)))


_phase = attrgetter("phase")
_id = attrgetter("id")
