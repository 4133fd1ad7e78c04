"""Pools: one cycle per pool, merged into one plan (SEMANTICS: "pool"; docs/scheduling.md).

A pool is a set of nodes whose GPUs are interchangeable (`a100`, `h100`). Entitlement,
admission, reclaim, reservations and placement all work inside one pool, with the
policy's terms for that pool (Policy.in_pool), so the cycle is `decide_pool` once per
pool, over that pool's nodes and the jobs that may run there:

- a running job belongs to the pool of the nodes it holds;
- a waiting job that asked for a pool or a GPU type (`Job.pool`) may run in every pool
  that has it (a node's pool, or its GPUs' type); one that asked for nothing, in any.

A waiting job that may run in several pools is offered to them in name order; once it
starts in one it is gone from the rest. Only in the last of them may it reclaim, hold a
reservation or preempt by priority, and only there does it count in its consumer's
demand: in the others it is a guest that takes what is free, by borrowing. Were it
allowed to reclaim in the first pool and then start in a later one, the first pool's
victims would have been stopped for nothing; were it counted in the demand of a pool
where it may not reclaim, its consumer could sit below an entitlement there that nothing
would ever serve. Its waiting reason is the last pool's.

Pure, like the rest of the core.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from operator import attrgetter

from schedulerd.core.model import (
    DEFAULT_POOL,
    ROOT,
    ConsumerPath,
    ConsumerState,
    Job,
    JobId,
    JobPhase,
    Node,
    NodeName,
    Plan,
    Policy,
    Snapshot,
)

# (the pool's snapshot, its terms, now, its guests, its name) -> its plan
DecidePool = Callable[[Snapshot, Policy, float, frozenset[JobId], str], Plan]


def pool_names(snapshot: Snapshot) -> tuple[str, ...]:
    """The pools of the snapshot's nodes, in the order they are decided."""
    return tuple(sorted({n.pool for n in snapshot.nodes}))


def candidate_pools(job: Job, snapshot: Snapshot, pools: Sequence[str]) -> tuple[str, ...]:
    """The pools a waiting job may run in, in decision order: the pool it named, or every
    pool made only of nodes of the GPU type it named (a type shared with other types in a
    pool does not select that pool: the cycle places jobs on a pool's nodes, not on some
    of them), or any."""
    if job.pool is None:
        return tuple(pools)
    return pools_for(job.pool, [(n.pool, n.gpu_type) for n in snapshot.nodes])


def pools_for(asked: str, nodes: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The pools a job asking for `asked` (a pool's name or a GPU type) may run in,
    sorted; `nodes` are each node's (pool, GPU type)."""
    if any(pool == asked for pool, _ in nodes):
        return (asked,)
    types: dict[str, set[str]] = defaultdict(set)
    for pool, gpu_type in nodes:
        types[pool].add(gpu_type)
    return tuple(sorted(p for p, t in types.items() if t == {asked}))


def decide_in_pools(
    snapshot: Snapshot,
    policy: Policy,
    now: float,
    one: DecidePool,
    asked_in: Callable[[str], Collection[str]] | None = None,
) -> Plan:
    """`asked_in(pool)`: what the snapshot's jobs ask for (their `pool`s), when the
    caller keeps it (the cycle's cache for that pool), asked only of a one-pool cluster;
    else read from the jobs."""
    pools = pool_names(snapshot)
    name = pools[0] if pools else DEFAULT_POOL
    if len(pools) <= 1 and asked_in is not None:
        asked = set(asked_in(name))
    else:
        asked = set(map(_asked, snapshot.jobs))  # one C-level pass
        asked.discard(None)
    if len(pools) <= 1 and (not asked or asked <= _names(snapshot)):
        # One pool, and every job may run in it: the cycle as it always was.
        return one(snapshot, policy.in_pool(name), now, frozenset(), name)

    node_pool = {n.name: n.pool for n in snapshot.nodes}
    by_pool: dict[str, list[Job]] = defaultdict(list)
    last_pool: dict[JobId, str] = {}
    nowhere: list[Job] = []
    # GPUs held by a job counted in another pool (its node changed pool under it): not
    # offered here, as fenced GPUs are not, so that no one else is given them.
    foreign: dict[NodeName, set[int]] = defaultdict(set)
    for j in snapshot.jobs:
        if j.phase is JobPhase.RUNNING:
            home = _running_pool(j, node_pool, snapshot, pools)
            by_pool[home].append(j)
            for s in j.held:
                if node_pool.get(s.node, home) != home:
                    foreign[s.node].add(s.index)
            continue
        where = candidate_pools(j, snapshot, pools)
        if not where:
            nowhere.append(j)
        for p in where:
            by_pool[p].append(j)
        if where:
            last_pool[j.id] = where[-1]

    plans: dict[str, Plan] = {}
    started: set[JobId] = set()
    for pool in pools:
        jobs = tuple(j for j in by_pool[pool] if j.id not in started)
        guests = frozenset(
            j.id for j in jobs if j.phase is JobPhase.PENDING and last_pool[j.id] != pool
        )
        nodes = tuple(
            _without_gpus(n, foreign[n.name]) if n.name in foreign else n
            for n in snapshot.nodes
            if n.pool == pool
        )
        part = Snapshot(nodes=nodes, jobs=jobs, user_usage=snapshot.user_usage)
        plan = one(part, policy.in_pool(pool), now, guests, pool)
        started.update(s.job_id for s in plan.starts)
        plans[pool] = plan
    return _merge(policy, snapshot, plans, last_pool, started, nowhere, pools)


_asked = attrgetter("pool")


def _without_gpus(node: Node, taken: set[int]) -> Node:
    return replace(node, gpus=tuple(i for i in node.gpus if i not in taken))


def _names(snapshot: Snapshot) -> set[str]:
    """What a job may ask for in a one-pool cluster: its name, or its type if all its
    nodes have one."""
    types = {n.gpu_type for n in snapshot.nodes}
    one_type = types.pop() if len(types) == 1 else ""
    return {n.pool for n in snapshot.nodes} | ({one_type} if one_type else set())


def _running_pool(
    job: Job, node_pool: Mapping[NodeName, str], snapshot: Snapshot, pools: Sequence[str]
) -> str:
    for slot in job.held:
        pool = node_pool.get(slot.node)
        if pool is not None:
            return pool
    # Its nodes are not in the snapshot (forgotten while it ran): count it where it
    # would have gone, so that its GPUs stay somebody's allocation somewhere.
    where = candidate_pools(job, snapshot, pools)
    return where[-1] if where else (pools[0] if pools else DEFAULT_POOL)


def _merge(
    policy: Policy,
    snapshot: Snapshot,
    plans: Mapping[str, Plan],
    last_pool: Mapping[JobId, str],
    started: set[JobId],
    nowhere: Sequence[Job],
    pools: Sequence[str],
) -> Plan:
    homes: dict[JobId, str] = {}
    for j in snapshot.jobs:
        if j.phase is not JobPhase.PENDING or j.id in started:
            continue
        home = last_pool.get(j.id)
        if home is not None:
            homes[j.id] = home
    lost = {
        j.id: (
            f"waiting for pool {j.pool}: no node has that pool or GPU type "
            f"(pools now: {', '.join(pools) or 'none'})"
        )
        for j in nowhere
    }
    reasons = PooledReasons(homes, {p: plan.pending_reasons for p, plan in plans.items()}, lost)
    per_pool = {pool: plan.consumers for pool, plan in plans.items()}
    return Plan(
        starts=tuple(s for p in plans.values() for s in p.starts),
        pending_reasons=reasons,
        consumers=_summed(policy, per_pool, snapshot, started),
        grows=tuple(g for p in plans.values() for g in p.grows),
        shrinks=tuple(s for p in plans.values() for s in p.shrinks),
        preemptions=tuple(x for p in plans.values() for x in p.preemptions),
        held=tuple(s for p in plans.values() for s in p.held),
        pools=per_pool,
    )


def _summed(
    policy: Policy,
    per_pool: Mapping[str, Mapping[ConsumerPath, ConsumerState]],
    snapshot: Snapshot,
    started: set[JobId],
) -> dict[ConsumerPath, ConsumerState]:
    """The consumers over all pools: GPUs summed; jobs counted once each (a job
    waiting in two pools is one waiting job)."""
    running: dict[ConsumerPath, int] = defaultdict(int)
    pending: dict[ConsumerPath, int] = defaultdict(int)
    for j in snapshot.jobs:
        if not policy.is_leaf(j.consumer) and j.phase is JobPhase.PENDING:
            continue
        counts = running if j.phase is JobPhase.RUNNING or j.id in started else pending
        # A running job of a consumer the policy dropped counts at the root, as in a pool.
        chain = policy.ancestors(j.consumer) if j.consumer in policy.consumers else (ROOT,)
        for p in chain:
            counts[p] += 1
    out: dict[ConsumerPath, ConsumerState] = {}
    for path in policy.consumers:
        states = [c[path] for c in per_pool.values() if path in c]
        out[path] = ConsumerState(
            path=path,
            demand=sum(s.demand for s in states),
            entitlement=sum(s.entitlement for s in states),
            reserved=sum(s.reserved for s in states),
            allocation=sum(s.allocation for s in states),
            pending_jobs=pending[path],
            running_jobs=running[path],
        )
    return out


class PooledReasons(Mapping[JobId, str]):
    """The waiting jobs' reasons over all pools, each its last pool's, worded when asked
    (as each pool's are: reasons.WaitingReasons)."""

    def __init__(
        self,
        homes: Mapping[JobId, str],
        per_pool: Mapping[str, Mapping[JobId, str]],
        lost: Mapping[JobId, str],
    ) -> None:
        self._homes = homes
        self._per_pool = per_pool
        self._lost = lost

    def of(self, job_id: JobId, consumer: ConsumerPath) -> str | None:
        """A job's reason, found in its pool by its consumer (reasons.WaitingReasons.of)."""
        home = self._homes.get(job_id)
        if home is not None:
            pool = self._per_pool[home]
            of = getattr(pool, "of", None)
            why = of(job_id, consumer) if of is not None else pool.get(job_id)
            if why is not None:
                return f"in pool {home}: {why}"
        return self._lost.get(job_id)

    def __getitem__(self, job_id: JobId) -> str:
        home = self._homes.get(job_id)
        if home is not None:
            why = self._per_pool[home].get(job_id)
            if why is not None:
                return f"in pool {home}: {why}"
        if job_id in self._lost:
            return self._lost[job_id]
        raise KeyError(job_id)

    def __iter__(self) -> Iterator[JobId]:
        for job_id in self._homes:
            if job_id in self:
                yield job_id
        yield from (j for j in self._lost if j not in self._homes)

    def __len__(self) -> int:
        return sum(1 for _ in self)
