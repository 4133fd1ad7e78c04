"""Property tests of the invariants of docs/design/semantics.md ("Invariants the tests
can check").

Random consumer trees (up to depth 3, valid as the policy loader would accept them:
a parent owns at least what its children own, a limit is at least what is owned),
random nodes (some drained), random running jobs holding distinct GPUs within every
limit, and random waiting jobs, some for consumers the policy does not have.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    decide,
    divide,
)

EPS = 1e-6
NOW = 5_000.0
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- strategies -------------------------------------------------------------


@st.composite
def consumer_trees(draw: st.DrawFn) -> Policy:
    specs: dict[ConsumerPath, ConsumerPolicy] = {}

    def build(path: ConsumerPath, depth: int) -> int:
        """Emit the subtree at `path` (parents first) and return its owned."""
        n_children = draw(st.integers(0, 3)) if depth < 3 else 0
        specs[path] = ConsumerPolicy(path)  # placeholder keeps parents before children
        base = "" if path == ROOT else path
        below = sum(build(ConsumerPath(f"{base}/c{i}"), depth + 1) for i in range(n_children))
        if path == ROOT:
            return below
        owned = below + draw(st.integers(0, 2) if n_children else st.integers(0, 4))
        limit = draw(st.one_of(st.none(), st.integers(max(owned, 1), owned + 8)))
        specs[path] = ConsumerPolicy(
            path=path,
            owned=owned,
            share=draw(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 3.0])),
            limit=limit,
            lend=draw(st.booleans().map(lambda b: b or draw(st.booleans()))),
            borrow=draw(st.booleans().map(lambda b: b or draw(st.booleans()))),
            order=draw(st.sampled_from(list(Order))),
        )
        return owned

    specs[ROOT] = ConsumerPolicy(ROOT)
    n_top = draw(st.integers(1, 4))
    for i in range(n_top):
        build(ConsumerPath(f"/c{i}"), 1)
    return Policy(consumers=specs)


@dataclass(frozen=True)
class World:
    policy: Policy
    snapshot: Snapshot


@st.composite
def worlds(draw: st.DrawFn) -> World:
    policy = draw(consumer_trees())
    leaves = list(policy.leaves())
    targets = [*leaves, ConsumerPath("/ghost")]  # a consumer the policy does not have
    nodes = tuple(
        Node(
            NodeName(f"n{i}"),
            tuple(range(draw(st.sampled_from([1, 2, 4, 4, 8])))),
            draw(st.booleans().map(lambda b: b or draw(st.booleans()))),
        )
        for i in range(draw(st.integers(1, 5)))
    )
    free = {n.name: list(n.gpus) for n in nodes}
    alloc: dict[ConsumerPath, int] = defaultdict(int)
    jobs: list[Job] = []
    seq = 0
    for _ in range(draw(st.integers(0, 10))):
        consumer = draw(st.sampled_from(targets))
        size = draw(st.integers(1, 4))
        chain = policy.ancestors(consumer) if consumer in policy.consumers else (ROOT,)
        limits = {p: policy.consumers[p].limit for p in chain}
        if any(lim is not None and alloc[p] + size > lim for p, lim in limits.items()):
            continue  # running jobs respect every limit, as the daemon would have
        fits = [name for name, gpus in free.items() if len(gpus) >= size]
        if not fits:
            continue
        where = draw(st.sampled_from(fits))
        held = tuple(GpuSlot(where, i) for i in free[where][:size])
        free[where] = free[where][size:]
        for p in chain:
            alloc[p] += size
        seq += 1
        jobs.append(_job(seq, consumer, draw, size, JobPhase.RUNNING, held))
    for _ in range(draw(st.integers(0, 15))):
        consumer = draw(st.sampled_from(targets if draw(st.integers(0, 9)) == 0 else leaves))
        size = draw(st.sampled_from([1, 1, 1, 2, 2, 3, 4, 4, 6, 8, 9]))
        seq += 1
        jobs.append(_job(seq, consumer, draw, size, JobPhase.PENDING, ()))
    usage = {
        (leaf, user): draw(st.floats(0, 1000))
        for leaf in leaves
        for user in ("u1", "u2")
        if draw(st.booleans())
    }
    return World(policy, Snapshot(nodes=nodes, jobs=tuple(jobs), user_usage=usage))


def _job(
    seq: int,
    consumer: ConsumerPath,
    draw: st.DrawFn,
    size: int,
    phase: JobPhase,
    held: tuple[GpuSlot, ...],
) -> Job:
    return Job(
        id=JobId(1000 + seq),
        consumer=consumer,
        user=draw(st.sampled_from(["u1", "u2", "u3"])),
        gpus_min=size,
        gpus_max=size,
        priority=draw(st.integers(0, 2)),
        submit_seq=seq,
        phase=phase,
        held=held,
        started_at=NOW - 10 if phase is JobPhase.RUNNING else None,
    )


# --- helpers ----------------------------------------------------------------


def chain_of(policy: Policy, consumer: ConsumerPath) -> tuple[ConsumerPath, ...]:
    return policy.ancestors(consumer) if consumer in policy.consumers else (ROOT,)


def allocation_after(world: World, plan: Plan) -> dict[ConsumerPath, int]:
    jobs = {j.id: j for j in world.snapshot.jobs}
    alloc: dict[ConsumerPath, int] = defaultdict(int)
    for j in world.snapshot.jobs:
        for p in chain_of(world.policy, j.consumer):
            alloc[p] += len(j.held)
    for s in (*plan.starts, *plan.grows):
        for p in chain_of(world.policy, jobs[s.job_id].consumer):
            alloc[p] += len(s.slots)
    return alloc


def free_after(world: World, plan: Plan) -> dict[NodeName, int]:
    taken = {s for j in world.snapshot.jobs for s in j.held}
    taken |= {s for st_ in (*plan.starts, *plan.grows) for s in st_.slots}
    # Held for a reclaim in progress: idle on purpose (SEMANTICS: the cycle, step 3).
    taken |= set(plan.held)
    return {
        n.name: sum(1 for i in n.gpus if GpuSlot(n.name, i) not in taken)
        for n in world.snapshot.nodes
        if n.schedulable
    }


def capacity_of(world: World) -> int:
    schedulable = {n.name for n in world.snapshot.nodes if n.schedulable}
    held_elsewhere = sum(
        1 for j in world.snapshot.jobs for s in j.held if s.node not in schedulable
    )
    return sum(len(n.gpus) for n in world.snapshot.nodes if n.schedulable) + held_elsewhere


# --- properties -------------------------------------------------------------


@SETTINGS
@given(worlds())
def test_plan_keeps_the_gpu_invariants(world: World) -> None:
    plan = decide(world.snapshot, world.policy, NOW)
    jobs = {j.id: j for j in world.snapshot.jobs}
    held = [s for j in world.snapshot.jobs for s in j.held]
    given_ = [s for st_ in (*plan.starts, *plan.grows) for s in st_.slots]
    # No GPU held by two jobs after the plan.
    assert len(set(held) | set(given_)) == len(held) + len(given_)
    gpus_of = {n.name: set(n.gpus) for n in world.snapshot.nodes if n.schedulable}
    started = set()
    for s in plan.starts:
        job = jobs[s.job_id]
        assert s.job_id not in started
        started.add(s.job_id)
        # A started rigid job gets exactly its N GPUs, all on schedulable nodes.
        assert job.phase is JobPhase.PENDING
        assert world.policy.is_leaf(job.consumer)
        assert len(s.slots) == job.gpus_min
        assert all(slot.index in gpus_of.get(slot.node, ()) for slot in s.slots)
        # A job that fits on one node is never split.
        if job.gpus_min <= max((len(g) for g in gpus_of.values()), default=0):
            assert len({slot.node for slot in s.slots}) == 1
    # No consumer over its limit (running jobs were generated within every limit).
    alloc = allocation_after(world, plan)
    for path, spec in world.policy.consumers.items():
        if spec.limit is not None:
            assert alloc[path] <= spec.limit, path
        assert plan.consumers[path].allocation == alloc[path]
    # Reserved GPUs (lend: false) stay idle: every start outside a reserving
    # consumer's subtree left at least its reservation free, so all of them together
    # took at most what was free minus that reservation.
    free_before = sum(free_after(world, Plan((), {}, {})).values())
    for path, state in plan.consumers.items():
        if state.reserved <= EPS:
            continue
        outside = sum(
            len(s.slots)
            for s in plan.starts
            if not (jobs[s.job_id].consumer + "/").startswith(path + "/")
        )
        if outside:
            assert outside <= free_before - state.reserved + EPS, path
    # Every waiting job has a reason, and only those.
    waiting = {j.id for j in world.snapshot.jobs if j.phase is JobPhase.PENDING} - started
    assert set(plan.pending_reasons) == waiting
    assert all(plan.pending_reasons[i].strip() for i in waiting)


@SETTINGS
@given(worlds())
def test_plan_is_work_conserving(world: World) -> None:
    """After the plan, no waiting job that every rule allows could still be placed in the
    free GPUs outside others' reservations (SEMANTICS: the cycle, step 3)."""
    policy = world.policy
    plan = decide(world.snapshot, policy, NOW)
    started = {s.job_id for s in plan.starts}
    alloc = allocation_after(world, plan)
    free = free_after(world, plan)
    total_free = sum(free.values())
    largest_node = max((len(n.gpus) for n in world.snapshot.nodes if n.schedulable), default=0)
    for job in world.snapshot.jobs:
        if job.phase is not JobPhase.PENDING or job.id in started:
            continue
        if not policy.is_leaf(job.consumer):
            continue
        n = job.gpus_min
        chain = policy.ancestors(job.consumer)
        allowed = True
        for p in chain:
            spec = policy.consumers[p]
            ent = plan.consumers[p].entitlement
            if spec.limit is not None and alloc[p] + n > spec.limit:
                allowed = False
            if p != ROOT and not spec.borrow and alloc[p] + n > ent + 1e-9:
                allowed = False
        if not allowed:
            continue
        reserved_by_others = sum(s.reserved for p, s in plan.consumers.items() if p not in chain)
        if total_free - reserved_by_others + 1e-9 < n:
            continue
        fits = any(f >= n for f in free.values()) if n <= largest_node else total_free >= n
        assert not fits, (job, plan.pending_reasons[job.id])


@SETTINGS
@given(worlds())
def test_entitlements_add_up(world: World) -> None:
    policy = world.policy
    plan = decide(world.snapshot, policy, NOW)
    states = plan.consumers
    capacity = capacity_of(world)
    for path in policy.consumers:
        state = states[path]
        # Entitlement never exceeds demand; reserved GPUs are counted apart.
        assert state.entitlement <= state.demand + EPS, path
        assert state.entitlement >= -EPS and state.reserved >= -EPS
        kids = policy.children(path)
        if kids:
            # A parent's entitlement is divided among its children, never exceeded.
            assert sum(states[c].entitlement for c in kids) <= state.entitlement + EPS, path
    # The whole pool is never promised twice: what the leaves are entitled to and
    # what is reserved fit in the capacity.
    leaves = sum(states[p].entitlement for p in policy.leaves())
    reserved = sum(s.reserved for s in states.values())
    assert states[ROOT].entitlement <= capacity + EPS
    assert leaves + reserved <= capacity + EPS


@SETTINGS
@given(consumer_trees(), st.integers(0, 40), st.data())
def test_division_invariants(policy: Policy, capacity: int, data: st.DataObject) -> None:
    """The same for `divide` alone, with any demand (not only what jobs give)."""
    leaf_demand = {leaf: data.draw(st.integers(0, 20)) for leaf in policy.leaves()}
    division = divide(policy, capacity, leaf_demand)
    ent, dem = division.entitlement, division.demand
    for path, spec in policy.consumers.items():
        assert -EPS <= ent[path] <= dem[path] + EPS
        if spec.limit is not None:
            assert dem[path] <= spec.limit
        kids = policy.children(path)
        if kids:
            assert sum(ent[c] for c in kids) <= ent[path] + EPS
    total = sum(ent[p] for p in policy.leaves()) + division.total_reserved
    assert total <= capacity + EPS
    # A lend:false consumer's unused owned GPUs stay reserved within its subtree
    # (counted once), whenever the cluster has what the policy promises.
    if capacity >= sum(policy.consumers[c].owned for c in policy.children(ROOT)):
        for path, spec in policy.consumers.items():
            unused = spec.owned - dem[path]
            if path == ROOT or spec.lend or unused <= 0:
                continue
            kept = sum(r for p, r in division.reserved.items() if (p + "/").startswith(path + "/"))
            assert kept >= unused - EPS, path
    # Nothing is left on the table: when every consumer may take surplus and none
    # reserves, the root's entitlement is all it can use.
    if all(s.share > 0 and s.lend for p, s in policy.consumers.items() if p != ROOT):
        assert ent[ROOT] == min(capacity, dem[ROOT])
        assert sum(ent[c] for c in policy.children(ROOT)) >= ent[ROOT] - EPS


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_decide_is_deterministic(world: World) -> None:
    plan = decide(world.snapshot, world.policy, NOW)
    assert decide(world.snapshot, world.policy, NOW) == plan
    reordered = Snapshot(
        nodes=tuple(reversed(world.snapshot.nodes)),
        jobs=tuple(reversed(world.snapshot.jobs)),
        user_usage=dict(reversed(list(world.snapshot.user_usage.items()))),
    )
    assert decide(reordered, world.policy, NOW) == plan
