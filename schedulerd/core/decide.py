"""The cycle: `decide(snapshot, policy, now) -> plan` (SEMANTICS: "The cycle").

Steps, in order:
1. entitlements by hierarchical water-filling (entitlement.py);
2. admission, most-starved consumer first, each leaf in its own order, gang
   (all of a job's `min` or nothing), within limits and `borrow`;
3. work conservation: the same loop goes on past entitlements for consumers that
   may borrow, so no GPU idles beside a job that fits it (unless reserved);
4-5. reclaim and priority preemption: not in this release (the plan has no
   stops yet; the Plan type grows `shrinks` and `preemptions` for them);
6. a reason for every start and every job left waiting (reasons.py).

Pure: no I/O, no clock (`now` is an argument), no logging.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping

from schedulerd.core.admission import Admission
from schedulerd.core.entitlement import divide
from schedulerd.core.model import (
    ROOT,
    ConsumerPath,
    ConsumerState,
    Job,
    JobId,
    JobPhase,
    Plan,
    Policy,
    Snapshot,
    Start,
)
from schedulerd.core.ordering import queue_order
from schedulerd.core.placement import FreeGpus
from schedulerd.core.reasons import queue_place, start_reason, why_waiting

_INF = float("inf")


def decide(snapshot: Snapshot, policy: Policy, now: float) -> Plan:
    del now  # reclaim (grace, min_runtime) will read it; admission does not
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
        leaf_demand[j.consumer] += j.gpus_max
    division = divide(policy, capacity, leaf_demand)

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
    starts = _admit(policy, adm, queues)

    # Step 6. Reasons.
    started = {s.job_id for s in starts}
    reasons = {}
    why: dict[tuple[ConsumerPath, int], str] = {}  # shared by jobs of one leaf and size
    for leaf, queue in queues.items():
        waiting = [j for j in queue if j.id not in started]
        for place, j in enumerate(waiting, start=1):
            key = (leaf, j.gpus)
            if key not in why:
                why[key] = why_waiting(leaf, j.gpus, adm)
            reasons[j.id] = why[key] + queue_place(leaf, place, len(waiting))
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
    )


def _admit(policy: Policy, adm: Admission, queues: Mapping[ConsumerPath, list[Job]]) -> list[Start]:
    """Hierarchical most-starved-first admission.

    From the root, descend into the child with the lowest allocation/entitlement
    (ties by path) that may still admit something, down to a leaf, and start that
    leaf's first job that passes every check. A leaf whose remaining jobs all
    fail is exhausted for the rest of the cycle: free GPUs only shrink and
    allocations only grow within a cycle, so a job that failed cannot pass later.
    One heap per parent; only the chosen path's keys change after a start.
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

    def admit_one(node: ConsumerPath) -> Start | None:
        if node in queues:
            return _admit_from_leaf(adm, node, queues[node], cursor)
        heap = heaps.get(node, [])  # no heap: nothing waits below (an idle queue)
        while heap:
            child = ConsumerPath(heap[0][2])
            start = admit_one(child)
            heapq.heappop(heap)
            if start is not None:
                heapq.heappush(heap, adm.starvation_key(child))
                return start
        return None

    starts = []
    while (start := admit_one(ROOT)) is not None:
        starts.append(start)
    return starts


def _admit_from_leaf(
    adm: Admission, leaf: ConsumerPath, queue: list[Job], cursor: dict[ConsumerPath, int]
) -> Start | None:
    while cursor[leaf] < len(queue):
        job = queue[cursor[leaf]]
        cursor[leaf] += 1
        if adm.blocker(leaf, job.gpus) is None:
            ratio_before = adm.ratio(leaf)
            slots = adm.start(job)
            return Start(job.id, slots, start_reason(job, leaf, ratio_before, adm))
    return None


def _consumer_states(
    policy: Policy,
    adm: Admission,
    running: list[Job],
    pending: list[Job],
    started: set[JobId],
) -> dict[ConsumerPath, ConsumerState]:
    running_n: dict[ConsumerPath, int] = defaultdict(int)
    pending_n: dict[ConsumerPath, int] = defaultdict(int)
    for j in running:
        for p in adm.chain(j.consumer):
            running_n[p] += 1
    for j in pending:
        counts = running_n if j.id in started else pending_n
        for p in policy.ancestors(j.consumer):
            counts[p] += 1
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
