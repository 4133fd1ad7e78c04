"""Property tests of the scheduler's promises on random multi-pool clusters (an outside
reviewer's attack on docs/pools.md): no GPU given twice, starts only in a pool the job
may use, per-pool limits held, every waiting job has a reason; and a differential test:
a pool's plan does not depend on another pool that nobody asks for."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schedulerd.core import (
    ROOT,
    ConsumerPath,
    GpuSlot,
    Job,
    JobId,
    JobPhase,
    Node,
    NodeName,
    Plan,
    Policy,
    Snapshot,
    decide,
)
from schedulerd.core.pools import candidate_pools, pool_names
from schedulerd.policy import PolicyError, load_policy

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
POOLS = ("a100", "h100", "l40s")
LEAVES = ("a", "b", "c")
NOW = 1000.0


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    lines = ["version: 1", "consumers:"]
    for leaf in LEAVES:
        owned = draw(st.integers(0, 4))
        limit = draw(st.one_of(st.none(), st.integers(max(owned, 1), owned + 10)))
        share = draw(st.sampled_from([0, 0.5, 1, 3]))
        lines.append(f"  {leaf}:")
        lines.append(f"    owned: {owned}")
        lines.append(f"    share: {share}")
        lines.append("    grace: 0s")
        if limit is not None:
            lines.append(f"    limit: {limit}")
        named = draw(st.lists(st.sampled_from(POOLS), unique=True, max_size=2))
        if named:
            lines.append("    pools:")
        for pool in named:
            p_owned = draw(st.integers(0, 6))
            p_limit = draw(st.one_of(st.none(), st.integers(max(p_owned, 1), p_owned + 10)))
            terms = [f"owned: {p_owned}"]
            if p_limit is not None:
                terms.append(f"limit: {p_limit}")
            elif limit is not None and limit < p_owned:
                terms.append("limit: null")
            lines.append(f"      {pool}: {{{', '.join(terms)}}}")
    try:
        return load_policy("\n".join(lines) + "\n")
    except PolicyError:
        assume(False)
        raise


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    nodes = []
    pools = draw(st.lists(st.sampled_from(POOLS), unique=True, min_size=1, max_size=3))
    for pool in pools:
        for i in range(draw(st.integers(1, 3))):
            gpus = draw(st.sampled_from([2, 4, 8]))
            schedulable = draw(st.booleans()) or i == 0
            # Pools of one type only: a type asked for selects whole pools here.
            nodes.append(Node(NodeName(f"{pool}-{i}"), tuple(range(gpus)), schedulable, pool, pool))
    jobs: list[Job] = []
    n = 0
    # Running jobs: distinct GPUs, each on one node.
    for nd in nodes:
        free = list(nd.gpus)
        while free:
            if not draw(st.booleans()):
                break
            k = draw(st.integers(1, len(free)))
            taken, free = free[:k], free[k:]
            n += 1
            held = tuple(GpuSlot(nd.name, g) for g in taken)
            elastic = draw(st.booleans())
            jobs.append(
                Job(
                    JobId(n), ConsumerPath("/" + draw(st.sampled_from(LEAVES))), "u",
                    k, k + (2 if elastic else 0), 0, n, JobPhase.RUNNING, held=held,
                    started_at=0.0, pool=draw(st.sampled_from([None, nd.pool])),
                )
            )  # fmt: skip
    for _ in range(draw(st.integers(0, 12))):
        n += 1
        gpus = draw(st.integers(1, 8))
        jobs.append(
            Job(
                JobId(n), ConsumerPath("/" + draw(st.sampled_from(LEAVES))), "u", gpus,
                gpus + draw(st.sampled_from([0, 0, 2])), draw(st.integers(0, 2)), n,
                JobPhase.PENDING, pool=draw(st.sampled_from([None, *POOLS])),
            )
        )  # fmt: skip
    return Snapshot(tuple(nodes), tuple(jobs))


def _given(plan: Plan) -> list[GpuSlot]:
    return [s for st_ in plan.starts for s in st_.slots] + [s for g in plan.grows for s in g.slots]


@SETTINGS
@given(policies(), snapshots())
def test_multi_pool_invariants(policy: Policy, snap: Snapshot) -> None:
    plan = decide(snap, policy, NOW)
    nodes = {n.name: n for n in snap.nodes}
    jobs = {j.id: j for j in snap.jobs}
    held = {s for j in snap.jobs for s in j.held}
    given_ = _given(plan)
    # No GPU given twice, none given that is held, all on schedulable nodes that exist.
    assert len(given_) == len(set(given_))
    assert not held & set(given_)
    for s in given_:
        assert s.node in nodes and nodes[s.node].schedulable and s.index in nodes[s.node].gpus
    pools = pool_names(snap)
    for start in plan.starts:
        job = jobs[start.job_id]
        assert job.phase is JobPhase.PENDING
        assert len(start.slots) == job.gpus_min
        where = {nodes[s.node].pool for s in start.slots}
        assert len(where) == 1  # one pool
        assert where <= set(candidate_pools(job, snap, pools))
    # Grows stay in the job's pool.
    for g in plan.grows:
        job = jobs[g.job_id]
        assert {nodes[s.node].pool for s in g.slots} <= {nodes[s.node].pool for s in job.held}
    # Every waiting job that did not start has a reason.
    started = {s.job_id for s in plan.starts}
    for j in snap.jobs:
        if j.phase is JobPhase.PENDING and j.id not in started:
            assert plan.pending_reasons.get(j.id), j
    # Limits per pool: what a consumer holds after the plan in a pool is within its
    # limit there (or no more than it held before: the plan never adds past a limit).
    before: dict[tuple[str, ConsumerPath], int] = defaultdict(int)
    added: dict[tuple[str, ConsumerPath], int] = defaultdict(int)
    for j in snap.jobs:
        for s in j.held:
            for p in policy.ancestors(j.consumer):
                before[(nodes[s.node].pool, p)] += 1
    for s_job, slots_ in [(st_.job_id, st_.slots) for st_ in plan.starts] + [
        (g.job_id, g.slots) for g in plan.grows
    ]:
        for s in slots_:
            for p in policy.ancestors(jobs[s_job].consumer):
                added[(nodes[s.node].pool, p)] += 1
    for (pool, path), n in added.items():
        limit = policy.in_pool(pool).consumers[path].limit
        if limit is not None and path != ROOT:
            assert before[(pool, path)] + n <= max(limit, before[(pool, path)]), (pool, path)
    # Per-pool numbers add up to the whole.
    if plan.pools:
        for path, state in plan.consumers.items():
            per = [c[path] for c in plan.pools.values() if path in c]
            assert abs(sum(s.entitlement for s in per) - state.entitlement) < 1e-6
            assert sum(s.allocation for s in per) == state.allocation


@SETTINGS
@given(policies(), snapshots())
def test_a_pool_nobody_asks_for_does_not_change_another_pools_plan(
    policy: Policy, snap: Snapshot
) -> None:
    """Jobs all bound to pool `p` (running there or asking for it): adding an idle pool
    beside it changes nothing of p's plan."""
    first = snap.nodes[0].pool
    nodes = tuple(n for n in snap.nodes if n.pool == first)
    names = {n.name for n in nodes}
    jobs = tuple(
        j
        for j in snap.jobs
        if (j.phase is JobPhase.RUNNING and all(s.node in names for s in j.held))
        or (j.phase is JobPhase.PENDING and j.pool == first)
    )
    alone = decide(Snapshot(nodes, jobs), policy, NOW)
    other = "zz-idle"
    extra = (Node(NodeName("zz-0"), tuple(range(8)), True, other, other),)
    both = decide(Snapshot(nodes + extra, jobs), policy, NOW)
    assert sorted(alone.starts, key=lambda s: s.job_id) == sorted(
        both.starts, key=lambda s: s.job_id
    )
    assert {p.job_id for p in alone.preemptions} == {p.job_id for p in both.preemptions}
    assert {s.job_id for s in alone.shrinks} == {s.job_id for s in both.shrinks}
    for path, state in alone.consumers.items():
        assert abs(both.pools[first][path].entitlement - state.entitlement) < 1e-6
