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
from collections.abc import Callable, Mapping
from typing import TypeVar

from reference_core.admission import Admission
from reference_core.placement import FreeGpus
from reference_core.pools import decide_in_pools
from reference_core.reasons import grow_reason, queue_place, start_reason, why_waiting
from reference_core.reclaim import Planner
from reference_core.reservation import Reservation, backfills, reserve
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
from schedulerd.core.ordering import queue_order
from schedulerd.core.windows import policy_at


def decide(snapshot: Snapshot, policy: Policy, now: float) -> Plan:
    """The plan for the whole cluster: one cycle per pool (pools.py), with each
    consumer's terms in force at `now` (its time windows: windows.py)."""
    return decide_in_pools(snapshot, policy_at(policy, now), now, decide_pool)


def decide_pool(
    snapshot: Snapshot, policy: Policy, now: float, guests: frozenset[JobId] = frozenset()
) -> Plan:
    """The cycle in one pool: `snapshot` holds its nodes and the jobs that may run
    there, `policy` its terms. `guests` are waiting jobs that may also run in a pool
    decided later: they start here if they can, but neither reclaim, reserve nor
    preempt here (pools.py: only in the last pool they may run in)."""
    running = [j for j in snapshot.jobs if j.phase is JobPhase.RUNNING]
    pending = [j for j in snapshot.jobs if j.phase is JobPhase.PENDING]
    known = [j for j in pending if policy.is_leaf(j.consumer)]

    # Step 1. Capacity counts schedulable GPUs plus GPUs still held on nodes
    # that are drained or unreachable: their holders are still somebody's allocation.
    schedulable = {n.name for n in snapshot.nodes if n.schedulable}
    capacity = sum(len(n.gpus) for n in snapshot.nodes if n.schedulable) + sum(
        1 for j in running for s in j.held if s.node not in schedulable
    )
    leaf_demand: dict[ConsumerPath, int] = defaultdict(int)
    for j in (*running, *known):
        if j.id not in guests:  # a guest counts in the pool where it may reclaim (pools.py)
            leaf_demand[j.consumer] += j.gpus_max
    leaf_usage: dict[ConsumerPath, float] = defaultdict(float)
    if policy.usage_weight > 0:
        for (leaf, _user), used in snapshot.user_usage.items():
            leaf_usage[leaf] += used
    division = divide(policy, capacity, leaf_demand, leaf_usage)

    free = FreeGpus(snapshot.nodes, (s for j in running for s in j.held))
    adm = Admission(policy, division, free)
    for j in running:
        adm.count_running(j)

    # Step 2-3. Per-leaf queues, then the most-starved-first admission loop.
    running_by_leaf: dict[ConsumerPath, list[Job]] = defaultdict(list)
    for j in running:
        running_by_leaf[j.consumer].append(j)
    pending_by_leaf: dict[ConsumerPath, list[Job]] = defaultdict(list)
    for j in known:
        pending_by_leaf[j.consumer].append(j)
    usage_by_leaf: dict[ConsumerPath, dict[str, float]] = defaultdict(dict)
    for (leaf, user), used in snapshot.user_usage.items():
        usage_by_leaf[leaf][user] = used
    queues = {
        leaf: queue_order(
            policy.consumers[leaf].order, jobs, running_by_leaf[leaf], usage_by_leaf[leaf]
        )
        for leaf, jobs in pending_by_leaf.items()
    }
    # Step 4, its first part: GPUs on their way back, and free ones beside them,
    # stay held for the waiting job they will serve, so that admission does not
    # hand out the first ones back before the rest are free.
    planner = Planner(adm, running, now)
    own = _without(queues, guests)
    planner.hold_incoming(own)
    adm.free.hold(planner.result.held)
    # Reservations (reservation.py): a leaf's first job that cannot be placed gets a
    # node (or nodes) whose free GPUs are held for it, so small jobs cannot starve it.
    reserved_nodes: set[NodeName] = set()
    reservations = reserve(adm, own, running, now, taken_nodes=reserved_nodes)

    # Step 2: the fair pass, consumers below their entitlement only.
    adm.fair_only = True
    starts = _serve(policy, adm, queues, _admit_job(adm))
    started = {s.job_id for s in starts}
    waiting = {leaf: [j for j in q if j.id not in started] for leaf, q in queues.items()}

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
        running,
        now,
        after_reclaim=served,
        taken_nodes=reserved_nodes,
    )

    # Step 3: work conservation: borrowing, then growing elastic jobs.
    adm.fair_only = False
    starts += _serve(policy, adm, waiting, _admit_job(adm))
    started = {s.job_id for s in starts}
    # Backfill: jobs with a time limit that ends before a reservation's start use its
    # held GPUs meanwhile.
    backfilled = _backfill(adm, queues, started, reservations, now)
    starts += backfilled
    started = {s.job_id for s in starts}
    backfilled_slots = {slot for st in backfilled for slot in st.slots}
    shrinking = {sh.job_id for sh in planner.result.shrinks}
    victims = shrinking | {p.job_id for p in planner.result.preemptions}
    grows = _grow(policy, adm, [j for j in running if j.id not in victims])

    # Step 5: priority preemption inside consumers that allow it, on what step 3
    # left free.
    planner.refresh()
    planner.by_priority(_without(waiting, guests), started)

    # Step 6. Reasons.
    reserved_notes = {r.job_id: r.describe(now) for r in reservations}
    reasons = {}
    why: dict[tuple[ConsumerPath, int], str] = {}  # shared by jobs of one leaf and size
    for leaf, queue in queues.items():
        still = [j for j in queue if j.id not in started]
        for place, j in enumerate(still, start=1):
            key = (leaf, j.gpus)
            if key not in why:
                why[key] = why_waiting(leaf, j.gpus, adm)
            note = planner.result.notes.get(j.id) or reserved_notes.get(j.id)
            text = why[key] + (f"; {note}" if note else "")
            reasons[j.id] = text + queue_place(leaf, place, len(still))
    for j in pending:
        if not policy.is_leaf(j.consumer):  # the jobs left out of `known`
            reasons[j.id] = (
                f"consumer {j.consumer} is not a leaf of the policy in force; "
                "apply a policy that has it, or cancel the job"
            )
    return Plan(
        starts=tuple(starts),
        pending_reasons=reasons,
        consumers=_consumer_states(policy, adm, running, known, started),
        grows=grows,
        shrinks=tuple(planner.result.shrinks),
        preemptions=tuple(planner.result.preemptions),
        held=(
            *planner.result.held,
            *(s for r in reservations for s in r.held if s not in backfilled_slots),
        ),
    )


T = TypeVar("T")
R = TypeVar("R")


def _without(
    queues: dict[ConsumerPath, list[Job]], guests: frozenset[JobId]
) -> dict[ConsumerPath, list[Job]]:
    if not guests:
        return queues
    return {leaf: [j for j in q if j.id not in guests] for leaf, q in queues.items()}


def _serve(
    policy: Policy,
    adm: Admission,
    queues: Mapping[ConsumerPath, list[T]],
    try_one: Callable[[ConsumerPath, T], R | None],
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
    cursor = dict.fromkeys(queues, 0)
    live: set[ConsumerPath] = set()
    for leaf in queues:
        live.update(policy.ancestors(leaf))
    heaps: dict[ConsumerPath, list[tuple[float, int, str]]] = {}
    for parent in live:
        children = [c for c in policy.children(parent) if c in live]
        heaps[parent] = [adm.starvation_key(c) for c in children]
        heapq.heapify(heaps[parent])

    def serve_leaf(leaf: ConsumerPath) -> R | None:
        queue = queues[leaf]
        while cursor[leaf] < len(queue):
            item = queue[cursor[leaf]]
            cursor[leaf] += 1
            result = try_one(leaf, item)
            if result is not None:
                return result
        return None

    def serve_one(node: ConsumerPath) -> R | None:
        if node in queues:
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


def _admit_job(adm: Admission) -> Callable[[ConsumerPath, Job], Start | None]:
    # (leaf, size) pairs refused since the last start: admission's state changes
    # only with a start, so until then the same check gives the same answer.
    refused: set[tuple[ConsumerPath, int]] = set()

    def admit(leaf: ConsumerPath, job: Job) -> Start | None:
        key = (leaf, job.gpus)
        if key in refused:
            return None
        if adm.blocker(leaf, job.gpus) is not None:
            refused.add(key)
            return None
        refused.clear()
        ratio_before = adm.ratio(leaf)
        slots = adm.start(job)
        return Start(job.id, slots, start_reason(job, leaf, ratio_before, adm))

    return admit


def _backfill(
    adm: Admission,
    queues: Mapping[ConsumerPath, list[Job]],
    started: set[JobId],
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
        for job in queues[leaf]:
            if job.id in started or job.time_limit_s is None or job.id in room:
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
                break
    return out


def _grow(policy: Policy, adm: Admission, running: list[Job]) -> tuple[Grow, ...]:
    """Idle GPUs go to running elastic jobs, one GPU at a time, most-starved
    consumer first, round-robin over a consumer's jobs, oldest first; a new GPU
    lands next to the job's workers when it can (SEMANTICS: the cycle, steps 2-3)."""
    by_leaf: dict[ConsumerPath, list[Job]] = defaultdict(list)
    for j in sorted(running, key=lambda j: (j.started_at or 0.0, j.id)):
        growable = j.elastic and not j.stopping and not j.releasing and len(j.held) < j.gpus_max
        if growable and policy.is_leaf(j.consumer):
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
    running: list[Job],
    pending: list[Job],
    started: set[JobId],
) -> dict[ConsumerPath, ConsumerState]:
    # Counted per consumer first, then up the tree once per consumer.
    running_c: dict[ConsumerPath, int] = defaultdict(int)
    pending_c: dict[ConsumerPath, int] = defaultdict(int)
    for j in running:
        running_c[j.consumer] += 1
    running_n: dict[ConsumerPath, int] = defaultdict(int)
    for c, n in running_c.items():
        for p in adm.chain(c):
            running_n[p] += n
    started_c: dict[ConsumerPath, int] = defaultdict(int)
    for j in pending:
        counts = started_c if j.id in started else pending_c
        counts[j.consumer] += 1
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
