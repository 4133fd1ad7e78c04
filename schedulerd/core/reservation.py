"""Reservations: no large job starves behind small ones (docs/scheduling.md).

Without them, any waiting job that fits goes ahead of one that does not: on a busy
cluster every GPU that frees up is taken at once by a 1-GPU job, and a job that needs
a whole node never sees one free. So, before admission:

- Each leaf's first waiting job in its own order (its priority, then its age: the
  consumer's most-starved job) that cannot be placed now, is within its consumer's
  entitlement, of a consumer that does not borrow, and that reclaim cannot serve (nobody borrows
  what reclaim would take back for it), gets a reservation: the node with the most GPUs
  free (or on their way back) among those large enough, or, for a job larger than any
  node, the fewest such nodes. Consumers are taken most-starved first; at most one
  reservation per leaf and one per four nodes, so most of the cluster stays open.
- The free GPUs of a reserved node, up to the job's need, are held: admission does
  not give them to anyone else, so the node drains towards the job. The choice is
  stable from cycle to cycle: the reserved node keeps the most GPUs free.
- Backfill: a waiting job that declares a time limit (`--time`) may start on held
  GPUs when it will end before the reserved job could start anyway: when every
  job holding the GPUs the reservation still needs has a time limit, the latest of
  those ends is the reservation's start; a job without a time limit never backfills
  into a reservation, and a reservation whose start is unknown takes no backfill
  (as Slurm's backfill scheduler).

Pure: the admission state, the queues, the running jobs and `now` in; reservations
and GPUs to hold out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schedulerd.core.admission import Admission, takes_back
from schedulerd.core.model import ConsumerPath, GpuSlot, Job, JobId, NodeName
from schedulerd.core.placement import FreeGpus
from schedulerd.core.running import RunningIndex

_EPS = 1e-9
NODES_PER_RESERVATION = 4  # at most one reservation per this many nodes
# Why a job waits that a reservation can help with: room on one node (fragmented),
# or no GPU free at all (a busy cluster that small jobs keep full).
_PLACEMENT = frozenset({"fragmented", "capacity"})


@dataclass(frozen=True)
class Reservation:
    job_id: JobId
    consumer: ConsumerPath
    gpus: int
    nodes: tuple[NodeName, ...]
    held: tuple[GpuSlot, ...]  # free GPUs held for it this cycle
    # When the GPUs it still needs are expected free (the latest time limit of their
    # holders), None when a holder has no time limit: then nothing backfills.
    starts_by: float | None

    def describe(self, now: float) -> str:
        where = ", ".join(self.nodes)
        when = (
            f"expected to start in {_seconds(self.starts_by - now)} (its holders' time limits)"
            if self.starts_by is not None
            else "start time unknown (its GPUs' holders have no time limit)"
        )
        return (
            f"holds a reservation on {where}: {len(self.held)} of its {self.gpus} GPUs "
            f"held for it as they free up; {when}"
        )


class Holders:
    """The running jobs on each node, and each node's GPUs held by jobs with a time
    limit: read by both of a cycle's calls to `reserve`, built once."""

    def __init__(self, running: RunningIndex) -> None:
        self.running = running.by_consumer  # per consumer
        self.on: Mapping[NodeName, Mapping[JobId, Job]] = running.on
        self.timed: Mapping[NodeName, int] = running.timed_on


def reserve(
    adm: Admission,
    queues: Mapping[ConsumerPath, Sequence[Job]],
    running: Holders,
    now: float,
    after_reclaim: frozenset[JobId] | None = None,
    taken_nodes: set[NodeName] | None = None,
) -> list[Reservation]:
    """Reservations for the most-starved jobs that cannot be placed, and the GPUs held
    for them (already taken out of `adm.free`).

    Before admission (`after_reclaim` None), a job that reclaim may serve is left to it.
    After reclaim, `after_reclaim` names the jobs reclaim did serve: the others that it
    was left to get their reservation then (reclaim may find nothing to take: victims
    at their max_preemptions, too young, scattered), so that the borrowing pass cannot
    take the GPUs they wait for."""
    free = adm.free
    nodes = free.nodes()
    most = max(1, len(nodes) // NODES_PER_RESERVATION)
    sizes = free.node_sizes()
    holders = running.on
    taken_nodes = taken_nodes if taken_nodes is not None else set()
    timed = running.timed
    # Nodes by the reservation's preference (_choose_nodes), sorted once: a reservation
    # changes only the free GPUs of the nodes it takes, which no later one may take.
    ranked = sorted(sizes, key=lambda node: (-(free.free_count(node) + timed.get(node, 0)), node))
    out: list[Reservation] = []
    for leaf in sorted(queues, key=adm.starvation_key):
        if len(taken_nodes) >= most or len(out) >= most:
            break
        queue = queues[leaf]
        if after_reclaim is None and _serves_now(adm, leaf, queue):
            # Most starved first: a leaf that can start its first job now comes before
            # any reservation of a less starved one (admission serves it next).
            break
        job = _first_blocked(adm, leaf, queue, check_reclaim=after_reclaim is None)
        if job is None or _priority_may_serve(adm, job, running.running):
            continue
        if after_reclaim is not None and job.id in after_reclaim:
            continue
        chosen = _choose_nodes(job.gpus, free, sizes, taken_nodes, ranked)
        if not chosen:
            continue
        # Never the GPUs `lend: false` consumers keep (admission.usable_free).
        room = max(0, int(adm.usable_free(leaf) + _EPS))
        held: list[GpuSlot] = []
        for node in chosen:
            need = min(job.gpus, room) - len(held)
            held += [GpuSlot(node, i) for i in free.free_on(node)[: max(0, need)]]
        taken_nodes.update(chosen)
        free.hold(held)
        starts_by = _starts_by(job.gpus - len(held), chosen, holders)
        out.append(Reservation(job.id, leaf, job.gpus, tuple(chosen), tuple(held), starts_by))
    return out


def _serves_now(adm: Admission, leaf: ConsumerPath, queue: Sequence[Job]) -> bool:
    """Whether admission would start this leaf's first job now."""
    return bool(queue) and adm.blocker(leaf, queue[0].gpus) is None


def _first_blocked(
    adm: Admission, leaf: ConsumerPath, queue: Sequence[Job], check_reclaim: bool = True
) -> Job | None:
    """The leaf's first waiting job, if placement alone keeps it waiting, it is no
    larger than its consumer's entitlement, and its consumer holds no more than that
    (a reservation idles GPUs: it is for fair share, not for borrowing; the job's own
    consumer may be what holds the GPUs it waits for, as on a cluster one consumer
    keeps busy)."""
    if not queue:
        return None
    job = queue[0]
    if job.gpus == 1 or adm.free.can_place(job.gpus):
        # One GPU fits wherever one frees up: it needs no node held for it.
        return None  # admission starts it (or something ahead of it by the fair order)
    code = adm.blocker(leaf, job.gpus)
    if code is None or code.partition(":")[0] not in _PLACEMENT:
        return None
    ent = adm.division.entitlement.get(leaf, 0.0)
    if job.gpus > ent + _EPS or adm.allocation[leaf] > ent + _EPS:
        # It borrows, or the job alone is more than its fair share: no GPUs are held
        # idle for what only borrowing could give.
        return None
    if check_reclaim and _reclaim_may_serve(adm, leaf, (adm.allocation[leaf] + job.gpus) / ent):
        return None  # reclaim's to serve: it frees GPUs where the job fits, within a cycle
    if job.gpus > adm.free.capacity:
        return None  # larger than what is schedulable now: no node can be made ready
    return job


def _priority_may_serve(
    adm: Admission, job: Job, running: Mapping[ConsumerPath, Mapping[JobId, Job]]
) -> bool:
    """Priority preemption inside its consumer (SEMANTICS: the cycle, step 5) may make
    room for it: that, not a drained node, serves it. `running`: per consumer."""
    if not adm.policy.consumers[job.consumer].priority_preemption:
        return False
    mine = running.get(job.consumer, {}).values()
    return any(j.priority < job.priority for j in mine)


def _reclaim_may_serve(adm: Admission, leaf: ConsumerPath, after: float) -> bool:
    """Whether some consumer borrows GPUs that reclaim would take back for `leaf`
    (admission.takes_back, reclaim's own rule). Then reclaim, not a reservation, serves
    the job: it is bounded by the victims' grace (SEMANTICS: invariants), a drained
    node is not."""
    return any(
        takes_back(adm.allocation[path], adm.division.entitlement.get(path, 0.0), after)
        for path in adm.policy.consumers
        if path != leaf and adm.policy.is_leaf(path)
    )


def _choose_nodes(
    n: int,
    free: FreeGpus,
    sizes: Mapping[NodeName, int],
    taken: set[NodeName],
    ranked: Sequence[NodeName],
) -> list[NodeName]:
    """The node (or nodes, for a job larger than any node) with the most GPUs free or
    held by jobs with a time limit (backfilled there, or bound to end), ties by name,
    among those not reserved already: `ranked` is every node in that order. Counting the
    timed ones keeps a reservation where it let jobs backfill: their GPUs are not free,
    but they come back when it counts."""
    if not free.spans_nodes(n):
        return next(([node] for node in ranked if node not in taken and sizes[node] >= n), [])
    chosen: list[NodeName] = []
    room = 0
    for node in ranked:
        if node in taken:
            continue
        chosen.append(node)
        room += sizes[node]
        if room >= n:
            return chosen
    return []


def _starts_by(
    still: int, nodes: Sequence[NodeName], holders: Mapping[NodeName, Mapping[JobId, Job]]
) -> float | None:
    """When `still` more GPUs of `nodes` are free: the ends of their holders, earliest
    first, until enough are counted; None when one needed has no time limit."""
    if still <= 0:
        return None
    ends: list[tuple[float, int]] = []
    for node in nodes:
        for j in holders.get(node, {}).values():
            count = sum(1 for s in j.held if s.node == node)
            if j.time_limit_s is None or j.started_at is None:
                ends.append((float("inf"), count))
            else:
                ends.append((j.started_at + j.time_limit_s, count))
    got = 0
    for end, count in sorted(ends):
        got += count
        if got >= still:
            return None if end == float("inf") else end
    return None


def backfills(job: Job, reservation: Reservation, now: float) -> bool:
    """Whether `job` may start on the reservation's held GPUs: it ends (by its time
    limit) before the reserved job could start anyway."""
    if job.time_limit_s is None or reservation.starts_by is None:
        return False
    return now + job.time_limit_s <= reservation.starts_by + _EPS


def _seconds(s: float) -> str:
    if s < 120:
        return f"{max(s, 0):.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
