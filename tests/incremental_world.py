"""Seeded random clusters, and sequences of cycles over them, for the plan-equality suite
(tests/test_core_incremental.py) and the decide benchmark's steady state.

A world is a policy and a snapshot; `step` applies a plan to it as the daemon would
(starts run, preemptions stop, shrinks release, grows add GPUs), then changes a few
things as a live cluster does between cycles: jobs end or are submitted, stops and
releases complete, a node joins, leaves or is drained, usage moves, now and then the
policy changes. Everything the core reads is drawn somewhere: elastic jobs, reclaim
(GPUs on their way back, borrowers), priority preemption, pools and GPU types,
reservations and backfill (time limits), time windows, usage_weight, reclaim_patience,
min_runtime, max_preemptions, lend/borrow, limits, consumers the policy lacks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from schedulerd.core import (
    ROOT,
    ConsumerPath,
    ConsumerPolicy,
    GpuSlot,
    Job,
    JobId,
    JobPhase,
    Node,
    NodeName,
    Order,
    Plan,
    Policy,
    Snapshot,
)
from schedulerd.core.model import PoolTerms, Window

POOLS = ("a100", "h100", "l4")


@dataclass
class World:
    policy: Policy
    snapshot: Snapshot
    now: float
    seq: int  # the last job id / submit_seq given


def random_policy(rng: random.Random, pools: tuple[str, ...] = ()) -> Policy:
    specs: dict[ConsumerPath, ConsumerPolicy] = {ROOT: ConsumerPolicy(ROOT)}
    named = tuple(sorted(rng.sample(pools, rng.randint(0, len(pools))))) if pools else ()

    def terms(owned: int) -> tuple[tuple[str, PoolTerms], ...]:
        return tuple(
            (
                p,
                PoolTerms(
                    owned=max(0, owned + rng.randint(-2, 2)),
                    share=rng.choice([0.5, 1.0, 2.0]),
                    limit=rng.choice([None, None, owned + rng.randint(1, 8)]),
                ),
            )
            for p in named
        )

    def windows(owned: int) -> tuple[Window, ...]:
        if rng.random() > 0.15:
            return ()
        start = rng.randrange(0, 86400, 600)
        return (
            Window(
                when="test",
                days=0b1111111,
                start=start,
                end=(start + rng.randrange(600, 40000, 600)) % 86400 or 86400,
                owned=rng.choice([None, owned + rng.randint(0, 4)]),
                share=rng.choice([None, rng.choice([0.5, 2.0, 4.0])]),
                limit=rng.choice([None, owned + rng.randint(2, 10)]),
            ),
        )

    def build(path: ConsumerPath, depth: int) -> int:
        n_children = rng.choice([0, 0, 2, 3]) if depth < 3 else 0
        specs[path] = ConsumerPolicy(path)  # keeps parents before children
        below = sum(build(ConsumerPath(f"{path}/c{i}"), depth + 1) for i in range(n_children))
        owned = below + rng.randint(0, 2 if n_children else 6)
        specs[path] = ConsumerPolicy(
            path=path,
            owned=owned,
            share=rng.choice([0.0, 0.5, 1.0, 1.0, 2.0, 3.0]),
            limit=rng.choice([None, None, None, max(owned, 1) + rng.randint(0, 10)]),
            lend=rng.random() > 0.2,
            borrow=rng.random() > 0.15,
            grace_s=rng.choice([0.0, 30.0, 120.0]),
            min_runtime_s=rng.choice([0.0, 0.0, 60.0, 600.0]),
            max_preemptions=rng.choice([1, 3, 3]),
            reclaim_patience_s=rng.choice([0.0, 0.0, 0.0, 120.0]),
            order=rng.choice(list(Order)),
            priority_preemption=rng.random() < 0.3,
            pools=terms(owned),
            windows=windows(owned) if not n_children else (),
        )
        return owned

    for i in range(rng.randint(1, 4)):
        build(ConsumerPath(f"/t{i}"), 1)
    if named:
        specs[ROOT] = ConsumerPolicy(ROOT, pools=tuple((p, PoolTerms(0, 1.0, None)) for p in named))
    return Policy(
        consumers=specs,
        usage_half_life_s=rng.choice([600.0, 3600.0]),
        usage_weight=rng.choice([0.0, 0.0, 0.5, 2.0]),
    )


def random_world(rng: random.Random) -> World:
    use_pools = rng.random() < 0.3
    pools = tuple(rng.sample(POOLS, rng.randint(1, 3))) if use_pools else ()
    policy = random_policy(rng, pools)
    nodes = tuple(_node(rng, i, pools) for i in range(rng.randint(1, 10)))
    world = World(policy, Snapshot(nodes=nodes, jobs=()), now=1_700_000_000.0, seq=0)
    free = {n.name: list(n.gpus) for n in nodes}
    jobs: list[Job] = []
    for _ in range(rng.randint(0, 25)):
        fits = [name for name, gpus in free.items() if gpus]
        if not fits:
            break
        where = NodeName(rng.choice(fits))
        size = rng.randint(1, len(free[where]))
        held = [GpuSlot(where, i) for i in free[where][:size]]
        free[where] = free[where][size:]
        if rng.random() < 0.15:  # spread over a second node
            other = [name for name, gpus in free.items() if gpus and name != where]
            if other:
                o = NodeName(rng.choice(other))
                k = rng.randint(1, len(free[o]))
                held += [GpuSlot(o, i) for i in free[o][:k]]
                free[o] = free[o][k:]
        world.seq += 1
        jobs.append(_running(rng, world, held))
    for _ in range(rng.randint(0, 40)):
        world.seq += 1
        jobs.append(_pending(rng, world, pools))
    leaves = list(policy.leaves())
    usage = {
        (leaf, u): rng.random() * 5000
        for leaf in leaves
        for u in ("u1", "u2", "u3")
        if rng.random() < 0.5
    }
    world.snapshot = Snapshot(nodes=nodes, jobs=tuple(jobs), user_usage=usage)
    return world


def _node(rng: random.Random, i: int, pools: tuple[str, ...]) -> Node:
    pool = rng.choice(pools) if pools else "default"
    return Node(
        NodeName(f"n{i:02d}"),
        tuple(range(rng.choice([1, 2, 4, 8, 8]))),
        schedulable=rng.random() > 0.15,
        pool=pool,
        gpu_type=pool if pools else "",
    )


def _consumer(rng: random.Random, policy: Policy) -> ConsumerPath:
    leaves = list(policy.leaves())
    r = rng.random()
    if r < 0.03:
        return ConsumerPath("/ghost")  # not in the policy
    if r < 0.05:
        return next(iter(p for p in policy.consumers if p != ROOT and p not in leaves), leaves[0])
    return rng.choice(leaves)


def _running(rng: random.Random, world: World, held: list[GpuSlot]) -> Job:
    size = len(held)
    elastic = size > 1 and rng.random() < 0.3
    gpus_min = rng.randint(1, size) if elastic else size
    stopping = rng.random() < 0.1
    releasing: tuple[GpuSlot, ...] = ()
    if elastic and not stopping and rng.random() < 0.3 and size > gpus_min:
        releasing = tuple(held[-(size - gpus_min) :][: rng.randint(1, size - gpus_min)])
    busy = stopping or releasing
    return Job(
        id=JobId(world.seq),
        consumer=_consumer(rng, world.policy),
        user=rng.choice(["u1", "u2", "u3"]),
        gpus_min=gpus_min,
        gpus_max=size + (rng.randint(0, 4) if elastic else 0),
        priority=rng.choice([0, 0, 1, 5]),
        submit_seq=world.seq,
        phase=JobPhase.RUNNING,
        held=tuple(held),
        started_at=world.now - rng.choice([5.0, 100.0, 1000.0, 10000.0]),
        anchor=held[0] if elastic else None,
        releasing=releasing,
        stopping=stopping,
        release_deadline=world.now + rng.choice([5.0, 25.0]) if busy else None,
        preemptions=rng.choice([0, 0, 0, 1, 3]),
        time_limit_s=rng.choice([None, None, 600.0, 7200.0]),
    )


def _pending(rng: random.Random, world: World, pools: tuple[str, ...]) -> Job:
    size = rng.choice([1, 1, 1, 2, 2, 3, 4, 4, 6, 8, 9, 16])
    elastic = rng.random() < 0.2
    return Job(
        id=JobId(world.seq),
        consumer=_consumer(rng, world.policy),
        user=rng.choice(["u1", "u2", "u3"]),
        gpus_min=size,
        gpus_max=size + (rng.randint(1, 4) if elastic else 0),
        priority=rng.choice([0, 0, 1, 5]),
        submit_seq=world.seq,
        phase=JobPhase.PENDING,
        time_limit_s=rng.choice([None, 60.0, 600.0, 7200.0]),
        pool=rng.choice([None, None, *pools, "nowhere"]) if pools else None,
        waiting_since=world.now - rng.choice([0.0, 50.0, 500.0]),
    )


def step(rng: random.Random, world: World, plan: Plan, churn: float = 1.0) -> None:
    """Apply `plan` as the daemon would, then let the cluster move on a little."""
    now = world.now
    jobs = {j.id: j for j in world.snapshot.jobs}
    for s in plan.starts:
        j = jobs[s.job_id]
        jobs[j.id] = replace(
            j,
            phase=JobPhase.RUNNING,
            held=s.slots,
            started_at=now,
            anchor=s.slots[0] if j.elastic else None,
            waiting_since=None,
        )
    for p in plan.preemptions:
        j = jobs[p.job_id]
        jobs[j.id] = replace(j, stopping=True, release_deadline=now + 30.0)
    for sh in plan.shrinks:
        j = jobs[sh.job_id]
        jobs[j.id] = replace(j, releasing=(*j.releasing, *sh.slots), release_deadline=now + 30.0)
    for g in plan.grows:
        j = jobs[g.job_id]
        jobs[j.id] = replace(j, held=(*j.held, *g.slots))
    world.now = now = now + rng.choice([1.0, 10.0, 60.0, 400.0])

    # Stops and releases that complete; jobs that end; submissions.
    for j in list(jobs.values()):
        if j.phase is not JobPhase.RUNNING:
            if rng.random() < 0.03 * churn:
                del jobs[j.id]  # cancelled while waiting
            continue
        if j.stopping and rng.random() < 0.6:
            if rng.random() >= 0.7:
                del jobs[j.id]
            else:  # a preemption: back in the queue, in its place (as the daemon keeps it)
                jobs[j.id] = replace(
                    j,
                    phase=JobPhase.PENDING,
                    held=(),
                    releasing=(),
                    stopping=False,
                    started_at=None,
                    anchor=None,
                    release_deadline=None,
                    preemptions=j.preemptions + 1,
                    waiting_since=now,
                )
        elif j.releasing and rng.random() < 0.6:
            jobs[j.id] = replace(
                j,
                held=tuple(s for s in j.held if s not in j.releasing),
                releasing=(),
                release_deadline=None,
            )
        elif rng.random() < 0.08 * churn:
            del jobs[j.id]  # ended
    pools = tuple(sorted({n.pool for n in world.snapshot.nodes} - {"default"}))
    for _ in range(rng.choice([0, 0, 1, 2, 5])):
        world.seq += 1
        job = _pending(rng, world, pools)
        jobs[job.id] = job

    nodes = list(world.snapshot.nodes)
    r = rng.random()
    if r < 0.08 * churn and nodes:  # drained or back
        i = rng.randrange(len(nodes))
        nodes[i] = replace(nodes[i], schedulable=not nodes[i].schedulable)
    elif r < 0.12 * churn:  # a node joins
        nodes.append(_node(rng, len(nodes) + 100 + world.seq, pools))
    elif r < 0.14 * churn and len(nodes) > 1:  # a node is forgotten (its jobs may still run)
        nodes.pop(rng.randrange(len(nodes)))

    usage = dict(world.snapshot.user_usage)
    if rng.random() < 0.5:
        for key in list(usage):
            usage[key] *= 0.9
        for j in jobs.values():
            if j.phase is JobPhase.RUNNING:
                key = (j.consumer, j.user)
                usage[key] = usage.get(key, 0.0) + len(j.held) * 10.0

    if rng.random() < 0.05 * churn:  # a new policy
        world.policy = random_policy(rng, pools)
    world.snapshot = Snapshot(nodes=tuple(nodes), jobs=tuple(jobs.values()), user_usage=usage)
