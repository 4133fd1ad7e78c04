"""The cycle: `decide(snapshot, policy, now) -> plan` (SEMANTICS: "The cycle").

Steps, as the code runs them:
1. entitlements by hierarchical water-filling (entitlement.py);
2. the fair pass: admission, most-starved consumer first, each leaf in its own
   order, gang (all of a job's `min` or nothing), within limits and `borrow`,
   for consumers below their entitlement;
4. reclaim (reclaim.py) for consumers still below their entitlement: GPUs on
   their way back, then shrinks, then preemptions; the GPUs it counts on are held
   (those a waiting job gets from GPUs on their way back are held before step 2);
3. work conservation: the same admission for everyone who may borrow, then idle
   GPUs grow elastic jobs, so no GPU idles beside a job that fits it unless it
   is reserved or held for a reclaim;
5. priority preemption inside consumers that allow it (reclaim.py);
6. a reason for every start, grow, shrink, preemption and waiting job.

Pure: no I/O, no clock (`now` is an argument), no logging.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeVar

from schedulerd.core.admission import Admission
from schedulerd.core.cache import DecideCache, PoolCache
from schedulerd.core.entitlement import divide
from schedulerd.core.model import (
    ROOT,
    ConsumerPath,
    ConsumerState,
    GpuSlot,
    Grow,
    Job,
    JobId,
    JobPhase,
    NodeName,
    Plan,
    Policy,
    Snapshot,
    Start,
)
from schedulerd.core.placement import FreeGpus
from schedulerd.core.pools import decide_in_pools
from schedulerd.core.queues import LeafQueue, waiting_views
from schedulerd.core.reasons import WaitingReasons, grow_reason, start_reason
from schedulerd.core.reclaim import Planner
from schedulerd.core.reservation import Holders, Reservation, backfills, reserve
from schedulerd.core.running import RunningIndex
from schedulerd.core.windows import policy_at


def decide(
    snapshot: Snapshot, policy: Policy, now: float, cache: DecideCache | None = None
) -> Plan:
    """The plan for the whole cluster: one cycle per pool (pools.py), with each
    consumer's terms in force at `now` (its time windows: windows.py). `cache`, kept by
    the caller from one cycle to the next, makes a cycle cost what changed since the
    last one rather than everything held (cache.py); the plan is the same without it."""
    cache = cache if cache is not None else DecideCache()

    def one(part: Snapshot, terms: Policy, at: float, guests: frozenset[JobId], pool: str) -> Plan:
        return decide_pool(part, terms, at, guests, cache.pool(pool))

    def asked(pool: str) -> Collection[str]:
        # What the snapshot's jobs ask for, from the pool's kept jobs (brought to the
        # snapshot here, once) rather than from a pass over every job.
        jobs = cache.pool(pool).jobs
        jobs.update(snapshot)
        return jobs.asked.keys()

    try:
        plan = decide_in_pools(snapshot, policy_at(policy, now), now, one, asked)
    except BaseException:
        cache.clear()  # a cycle cut short may have left it half updated
        raise
    cache.forget_others()
    return plan


def decide_pool(
    snapshot: Snapshot,
    policy: Policy,
    now: float,
    guests: frozenset[JobId] = frozenset(),
    kept: PoolCache | None = None,
) -> Plan:
    """The cycle in one pool: `snapshot` holds its nodes and the jobs that may run
    there, `policy` its terms. `guests` are waiting jobs that may also run in a pool
    decided later: they start here if they can, but neither reclaim, reserve nor
    preempt here (pools.py: only in the last pool they may run in). `kept`: this
    pool's jobs and waiting queues as the last cycle left them (cache.py)."""
    cache = kept if kept is not None else PoolCache()
    try:
        cache.jobs.update(snapshot)
    except BaseException:
        cache.jobs.clear()
        raise
    changes = cache.jobs.take_waiting()
    index = cache.jobs.running
    leaf_demand: dict[ConsumerPath, int] = defaultdict(int, index.demand)  # guests wait
    usage_by_leaf: dict[ConsumerPath, dict[str, float]] = defaultdict(dict)
    for (leaf, user), used in snapshot.user_usage.items():
        usage_by_leaf[leaf][user] = used
    kept_queues = cache.queues
    kept_queues.update(policy, changes, index.by_consumer, usage_by_leaf)
    queues: dict[ConsumerPath, LeafQueue] = dict(kept_queues.queues)

    # Step 1. Capacity counts schedulable GPUs plus GPUs still held on nodes
    # that are drained or unreachable: their holders are still somebody's allocation.
    schedulable = {n.name for n in snapshot.nodes if n.schedulable}
    capacity = sum(len(n.gpus) for n in snapshot.nodes if n.schedulable) + sum(
        n for node, n in index.held_on.items() if node not in schedulable
    )
    for leaf, q in queues.items():
        leaf_demand[leaf] += q.demand
    if guests:  # a guest counts in the pool where it may reclaim (pools.py)
        for leaf, q in queues.items():
            for j in q.jobs:
                if j.id in guests:
                    leaf_demand[leaf] -= j.gpus_max
    leaf_usage: dict[ConsumerPath, float] = defaultdict(float)
    if policy.usage_weight > 0:
        for (leaf, _user), used in snapshot.user_usage.items():
            leaf_usage[leaf] += used
    division = divide(policy, capacity, leaf_demand, leaf_usage)

    free = FreeGpus(snapshot.nodes, taken=index.taken)
    adm = Admission(policy, division, free)
    for consumer, held in index.held_by.items():
        adm.add_running(consumer, held)

    # Step 2-3. Per-leaf queues (kept sorted between cycles), then the most-starved-first
    # admission loop.
    nothing: dict[JobId, ConsumerPath] = {}
    full = waiting_views(queues, nothing)
    # Step 4, its first part: GPUs on their way back, and free ones beside them,
    # stay held for the waiting job they will serve, so that admission does not
    # hand out the first ones back before the rest are free.
    planner = Planner(adm, index, cache.jobs.rank, now)
    own = _without(full, guests)
    planner.hold_incoming(own)
    adm.free.hold(planner.result.held)
    # Reservations (reservation.py): a leaf's first job that cannot be placed gets a
    # node (or nodes) whose free GPUs are held for it, so small jobs cannot starve it.
    reserved_nodes: set[NodeName] = set()
    holders = Holders(index)
    reservations = reserve(adm, own, holders, now, taken_nodes=reserved_nodes)

    # Step 2: the fair pass, consumers below their entitlement only.
    adm.fair_only = True
    started: dict[JobId, ConsumerPath] = {}
    starts = _serve_jobs(policy, adm, _below_entitlement(adm, queues), started)
    waiting = waiting_views(queues, started)

    # Step 4: reclaim for consumers still below their entitlement; the GPUs it
    # counts on are held, so the borrowing pass cannot take them back.
    planner.refresh()
    planner.reclaim(_without(waiting, guests))
    adm.free.hold(planner.result.held)
    # Jobs left to reclaim that it could not serve get their reservation now, before
    # the borrowing pass could take the GPUs they wait for.
    served = frozenset(planner.result.notes)
    reservations += reserve(
        adm,
        _without(waiting, guests),
        holders,
        now,
        after_reclaim=served,
        taken_nodes=reserved_nodes,
    )

    # Step 3: work conservation: borrowing, then growing elastic jobs.
    adm.fair_only = False
    starts += _serve_jobs(policy, adm, queues, started)
    # Backfill: jobs with a time limit that ends before a reservation's start use its
    # held GPUs meanwhile.
    backfilled = _backfill(adm, queues, started, reservations, now)
    starts += backfilled
    backfilled_slots = {slot for st in backfilled for slot in st.slots}
    shrinking = {sh.job_id for sh in planner.result.shrinks}
    victims = shrinking | {p.job_id for p in planner.result.preemptions}
    grows = _grow(policy, adm, [j for j in index.elastic.values() if j.id not in victims])

    # Step 5: priority preemption inside consumers that allow it, on what step 3
    # left free, leaf by leaf in the order their first waiting job comes in the snapshot.
    # Its queues are those after the fair pass, as they always were.
    planner.refresh()
    planner.by_priority(_in_snapshot_order(policy, _without(waiting, guests), snapshot), started)

    # Step 6. Reasons: worded when asked (reasons.WaitingReasons), from what this cycle
    # decided; nothing below changes once the plan is out.
    reserved_notes = {r.job_id: r.describe(now) for r in reservations}
    noted_in = dict(planner.result.noted_in)
    noted_in.update((r.job_id, r.consumer) for r in reservations)
    reasons = WaitingReasons(
        adm,
        waiting_views(queues, dict(started)),
        dict(planner.result.notes),
        reserved_notes,
        dict(kept_queues.others),
        noted_in,
    )
    return Plan(
        starts=tuple(starts),
        pending_reasons=reasons,
        consumers=_consumer_states(policy, adm, index, queues, started),
        grows=grows,
        shrinks=tuple(planner.result.shrinks),
        preemptions=tuple(planner.result.preemptions),
        held=(
            *planner.result.held,
            *(s for r in reservations for s in r.held if s not in backfilled_slots),
        ),
    )


def _in_snapshot_order(
    policy: Policy, queues: Mapping[ConsumerPath, Sequence[Job]], snapshot: Snapshot
) -> dict[ConsumerPath, Sequence[Job]]:
    """The queues of leaves with priority preemption (the only ones step 5 serves), in
    the order of their first waiting job in the snapshot: the order the cycle has always
    served them in. The scan stops once every such leaf is found."""
    wanted = {
        leaf for leaf, q in queues.items() if q and policy.consumers[leaf].priority_preemption
    }
    if len(wanted) <= 1:
        return {leaf: queues[leaf] for leaf in wanted}
    order: dict[ConsumerPath, Sequence[Job]] = {}
    for j in snapshot.jobs:
        if j.consumer in wanted and j.consumer not in order and j.phase is JobPhase.PENDING:
            order[j.consumer] = queues[j.consumer]
            if len(order) == len(wanted):
                break
    return order


T = TypeVar("T")
R = TypeVar("R")


def _without(
    queues: Mapping[ConsumerPath, Sequence[Job]], guests: frozenset[JobId]
) -> Mapping[ConsumerPath, Sequence[Job]]:
    if not guests:
        return queues
    return {leaf: [j for j in q if j.id not in guests] for leaf, q in queues.items()}


def _serve(
    policy: Policy,
    adm: Admission,
    queues: Mapping[ConsumerPath, list[T]],
    try_one: Callable[[ConsumerPath, T], R | None],
) -> list[R]:
    """Serve each leaf's items (a GPU to grow) in order through `try_one`; see
    `_serve_tree`. A leaf's cursor moves past every item tried."""
    cursor = dict.fromkeys(queues, 0)

    def serve_leaf(leaf: ConsumerPath) -> R | None:
        queue = queues[leaf]
        while cursor[leaf] < len(queue):
            item = queue[cursor[leaf]]
            cursor[leaf] += 1
            result = try_one(leaf, item)
            if result is not None:
                return result
        return None

    return _serve_tree(policy, adm, queues, serve_leaf)


def _serve_tree(
    policy: Policy,
    adm: Admission,
    leaves: Collection[ConsumerPath],
    serve_leaf: Callable[[ConsumerPath], R | None],
) -> list[R]:
    """Hierarchical most-starved-first service.

    From the root, descend into the child with the lowest allocation/entitlement
    (ties by path) that may still be served, down to a leaf, and serve that
    leaf's first item (a job to start, a GPU to grow) that passes every check. A
    leaf whose remaining items all fail is exhausted for the rest of the pass:
    free GPUs only shrink and allocations only grow within a pass, so an item
    that failed cannot pass later. One heap per parent; only the chosen path's
    keys change after a success.
    """
    live: set[ConsumerPath] = set()
    for leaf in leaves:
        live.update(policy.ancestors(leaf))
    heaps: dict[ConsumerPath, list[tuple[float, int, str]]] = {}
    for parent in live:
        children = [c for c in policy.children(parent) if c in live]
        heaps[parent] = [adm.starvation_key(c) for c in children]
        heapq.heapify(heaps[parent])

    def serve_one(node: ConsumerPath) -> R | None:
        if node in leaves:
            return serve_leaf(node)
        heap = heaps.get(node, [])  # no heap: nothing waits below (an idle queue)
        while heap:
            child = ConsumerPath(heap[0][2])
            result = serve_one(child)
            heapq.heappop(heap)
            if result is not None:
                heapq.heappush(heap, adm.starvation_key(child))
                return result
        return None

    served = []
    while (result := serve_one(ROOT)) is not None:
        served.append(result)
    return served


# Blocker codes (admission.Admission.blocker) that a job of n GPUs fails only if every
# larger job fails too: "allocation + n > bound" and "free < n". Not "fragmented": a job
# larger than any node spans nodes and may fit where a smaller one does not.
_MONOTONE = frozenset({"limit", "borrow", "reserved", "capacity"})


def _serve_jobs(
    policy: Policy,
    adm: Admission,
    queues: Mapping[ConsumerPath, LeafQueue],
    started: dict[JobId, ConsumerPath],
) -> list[Start]:
    """Admission over the leaves' queues (`_serve_tree`), skipping the jobs in
    `started` (added to as jobs start). A size a leaf was refused since the last start
    anywhere is refused again until then (admission's state changes only with a
    start): the queue jumps over its jobs (LeafQueue.next_at) rather than trying each."""
    cursor = dict.fromkeys(queues, 0)
    refused: dict[ConsumerPath, set[int]] = {}
    no_sizes: set[int] = set()

    def serve_leaf(leaf: ConsumerPath) -> Start | None:
        nonlocal refused
        queue = queues[leaf]
        while True:
            at = queue.next_at(cursor[leaf], refused.get(leaf, no_sizes), started)
            if at is None:
                cursor[leaf] = len(queue)
                return None
            cursor[leaf] = at + 1
            job = queue.jobs[at]
            code = adm.blocker(leaf, job.gpus)
            if code is not None:
                kind = code.partition(":")[0]
                if kind == "fair":  # whatever the size: nothing of this leaf passes
                    cursor[leaf] = len(queue)
                    return None
                sizes = refused.setdefault(leaf, set())
                if kind in _MONOTONE:  # every larger size fails the same check
                    sizes.update(k for k in queue.at if k >= job.gpus)
                else:
                    sizes.add(job.gpus)
                continue
            refused = {}
            ratio_before = adm.ratio(leaf)
            slots = adm.start(job)
            started[job.id] = leaf
            return Start(job.id, slots, start_reason(job, leaf, ratio_before, adm))

    return _serve_tree(policy, adm, queues, serve_leaf)


def _below_entitlement(
    adm: Admission, queues: Mapping[ConsumerPath, LeafQueue]
) -> dict[ConsumerPath, LeafQueue]:
    """The queues of leaves that the fair pass may serve: every consumer on the way
    up below its entitlement. The others it would refuse at their first job, whatever
    its size ("fair": allocations only grow within a pass), and serve nothing from;
    left out, they cost nothing."""
    below: dict[ConsumerPath, bool] = {}  # per consumer

    def ok(leaf: ConsumerPath) -> bool:
        for p in adm.policy.ancestors(leaf):
            if p == ROOT:
                continue
            known = below.get(p)
            if known is None:
                known = below[p] = adm.below_entitlement(p)
            if not known:
                return False
        return True

    return {leaf: q for leaf, q in queues.items() if ok(leaf)}


def _backfill(
    adm: Admission,
    queues: Mapping[ConsumerPath, LeafQueue],
    started: dict[JobId, ConsumerPath],
    reservations: list[Reservation],
    now: float,
) -> list[Start]:
    """Waiting jobs with a time limit that ends before a reservation could start take
    its held GPUs (whole on one node, as placement would), most-starved consumer first,
    each leaf in its order; limits and `borrow` hold as in admission."""
    out: list[Start] = []
    room = {r.job_id: list(r.held) for r in reservations if r.starts_by is not None}
    if not room:
        return out
    for leaf in sorted(queues, key=adm.starvation_key):
        for job in queues[leaf].timed:  # the others may not backfill
            if job.id in started or job.id in room:
                continue
            code = adm.blocker(leaf, job.gpus)
            if code is not None and code.partition(":")[0] not in ("fragmented", "capacity"):
                continue  # a limit or `borrow`: not for a reservation to lift
            for r in reservations:
                slots = room.get(r.job_id, [])
                if not backfills(job, r, now) or len(slots) < job.gpus:
                    continue
                by_node: dict[NodeName, list[GpuSlot]] = defaultdict(list)
                for slot in slots:
                    by_node[slot.node].append(slot)
                node = next((n for n, got in sorted(by_node.items()) if len(got) >= job.gpus), None)
                if node is None:
                    continue
                taken = tuple(by_node[node][: job.gpus])
                room[r.job_id] = [s for s in slots if s not in taken]
                ratio_before = adm.ratio(leaf)
                adm.add(leaf, job.gpus)
                reason = start_reason(job, leaf, ratio_before, adm)
                reason += f"; backfilled on GPUs held for job {r.job_id}, ending before it starts"
                out.append(Start(job.id, taken, reason))
                started[job.id] = leaf
                break
    return out


def _grow(policy: Policy, adm: Admission, running: list[Job]) -> tuple[Grow, ...]:
    """Idle GPUs go to running elastic jobs, one GPU at a time, most-starved
    consumer first, round-robin over a consumer's jobs, oldest first; a new GPU
    lands next to the job's workers when it can (SEMANTICS: the cycle, steps 2-3).
    `running`: the running jobs that may grow (elastic ones, at least), in any order."""
    by_leaf: dict[ConsumerPath, list[Job]] = defaultdict(list)
    growable = [
        j
        for j in running
        if j.gpus_max > j.gpus_min  # elastic
        and not j.stopping
        and not j.releasing
        and len(j.held) < j.gpus_max
        and policy.is_leaf(j.consumer)
    ]
    for j in sorted(growable, key=lambda j: (j.started_at or 0.0, j.id)):
        by_leaf[j.consumer].append(j)
    if not by_leaf or adm.free.total == 0:
        return ()
    tokens: dict[ConsumerPath, list[Job]] = {}
    for leaf, jobs in by_leaf.items():
        room = max(j.gpus_max - len(j.held) for j in jobs)
        rounds = [j for k in range(room) for j in jobs if j.gpus_max - len(j.held) > k]
        tokens[leaf] = rounds[: adm.free.total]
    added: dict[JobId, list[GpuSlot]] = defaultdict(list)

    def grow(leaf: ConsumerPath, job: Job) -> GpuSlot | None:
        if adm.blocker(leaf, 1) is not None:
            return None
        near = sorted({s.node for s in (*job.held, *added[job.id])})
        slot = adm.free.place_near(near)
        if slot is not None:
            adm.add(leaf, 1)
            added[job.id].append(slot)
        return slot

    _serve(policy, adm, tokens, grow)
    by_id = {j.id: j for j in running}
    return tuple(
        Grow(job_id, tuple(slots), grow_reason(by_id[job_id], len(slots), adm))
        for job_id, slots in added.items()
    )


def _consumer_states(
    policy: Policy,
    adm: Admission,
    running: RunningIndex,
    queues: Mapping[ConsumerPath, LeafQueue],
    started: Mapping[JobId, ConsumerPath],
) -> dict[ConsumerPath, ConsumerState]:
    # Counted per consumer first, then up the tree once per consumer.
    running_c = {c: len(jobs) for c, jobs in running.by_consumer.items()}
    running_n: dict[ConsumerPath, int] = defaultdict(int)
    for c, n in running_c.items():
        for p in adm.chain(c):
            running_n[p] += n
    started_c: dict[ConsumerPath, int] = defaultdict(int)
    for leaf in started.values():
        started_c[leaf] += 1
    pending_c = {leaf: len(q) - started_c.get(leaf, 0) for leaf, q in queues.items()}
    pending_n: dict[ConsumerPath, int] = defaultdict(int)
    for counts, into in ((started_c, running_n), (pending_c, pending_n)):
        for c, n in counts.items():
            for p in policy.ancestors(c):
                into[p] += n
    return {
        p: ConsumerState(
            path=p,
            demand=adm.division.demand.get(p, 0),
            entitlement=adm.division.entitlement.get(p, 0.0),
            reserved=adm.division.reserved.get(p, 0.0),
            allocation=adm.allocation[p],
            pending_jobs=pending_n[p],
            running_jobs=running_n[p],
        )
        for p in policy.consumers
    }
