"""The plan-equality suite (issue 15, must have 1): the incremental cycle decides exactly
what the cycle before it did (tests/reference_core, the core as it was), plan for plan
and reason for reason, over varied random clusters and over sequences of cycles in which
the cycle's cache is carried from one cycle to the next while the cluster changes a little
(tests/incremental_world.py)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import reference_core
from incremental_world import World, random_world, step

from schedulerd.core import Changes, DecideCache, Job, JobId, Plan, Snapshot, decide
from schedulerd.core.reasons import count_kinds, reason_for
from schedulerd.daemon.metrics import waiting_kind


def assert_same(got: Plan, want: Plan, where: str) -> None:
    assert got.starts == want.starts, where
    assert got.grows == want.grows, where
    assert got.shrinks == want.shrinks, where
    assert got.preemptions == want.preemptions, where
    assert got.held == want.held, where
    assert dict(got.consumers) == dict(want.consumers), where
    assert {p: dict(c) for p, c in got.pools.items()} == {
        p: dict(c) for p, c in want.pools.items()
    }, where
    assert len(got.pending_reasons) == len(want.pending_reasons), where
    assert dict(got.pending_reasons) == dict(want.pending_reasons), where
    # Asked one at a time, as the daemon's readers do, each reason is the same too.
    for job_id, text in want.pending_reasons.items():
        assert got.pending_reasons.get(job_id) == text, (where, job_id)
    assert got.pending_reasons.get(JobId(-1)) is None


def assert_same_lookups(got: Plan, want: Plan, snapshot: Snapshot, where: str) -> None:
    """The daemon's reads: a job's reason found by its consumer (reason_for), and the
    waiting jobs counted by kind of reason (count_kinds, classified as /metrics does)."""
    consumer = {j.id: j.consumer for j in snapshot.jobs}
    for job_id, text in want.pending_reasons.items():
        assert reason_for(got.pending_reasons, job_id, consumer[job_id]) == text, (where, job_id)
    counts: dict[tuple[str, str], int] = {}
    for job_id, text in want.pending_reasons.items():
        key = (consumer[job_id], waiting_kind(text))
        counts[key] = counts.get(key, 0) + 1
    assert count_kinds(got.pending_reasons, consumer.get, waiting_kind) == counts, where


def with_changes(before: Snapshot | None, now: Snapshot, since: int, lose_gone: bool) -> Snapshot:
    """`now` carrying what changed since `before` (core.Changes), as the daemon sends it;
    `lose_gone`: leave out the jobs that went (a caller that lost track: the core must
    notice by the count and compare every job itself)."""
    if before is None:
        return now
    old = {j.id: j for j in before.jobs}
    jobs: dict[JobId, Job | None] = {j.id: j for j in now.jobs if old.get(j.id) is not j}
    if not lose_gone:
        jobs.update((i, None) for i in old.keys() - {j.id for j in now.jobs})
    return replace(now, changes=Changes(since=since, generation=since + 1, jobs=jobs))


def run_sequence(seed: int, cycles: int, churn: float = 1.0, changes: str = "given") -> int:
    """`changes`: "given" (each snapshot says what changed since the last: the daemon's),
    "none" (the cache compares every job: the simulator's), "stale" (every other
    cycle's changes are from an older snapshot), "lossy" (jobs that went are left out)."""
    rng = random.Random(seed)
    world: World = random_world(rng)
    cache = DecideCache()
    compared = 0
    before: Snapshot | None = None
    for cycle in range(cycles):
        want = reference_core.decide(world.snapshot, world.policy, world.now)
        given = world.snapshot
        if changes != "none":
            since = cycle - 1 if changes != "stale" or cycle % 2 else cycle - 2
            given = with_changes(before, world.snapshot, since, changes == "lossy")
        got = decide(given, world.policy, world.now, cache)
        assert_same(got, want, f"seed {seed}, cycle {cycle}")
        assert_same_lookups(got, want, world.snapshot, f"seed {seed}, cycle {cycle}")
        # Without a cache: the same plan as well.
        assert_same(decide(given, world.policy, world.now), want, f"seed {seed} bare")
        compared += 1
        before = world.snapshot
        step(rng, world, want, churn)
    return compared


@pytest.mark.parametrize("block", range(8))
def test_sequences_of_cycles_decide_as_the_reference(block: int) -> None:
    """Forty seeds per block, twelve cycles each, the cache carried through; half the
    seeds with each snapshot's changes given, half without."""
    for seed in range(block * 40, block * 40 + 40):
        run_sequence(seed, cycles=12, changes="given" if seed % 2 else "none")


@pytest.mark.parametrize("changes", ["stale", "lossy"])
def test_changes_that_do_not_apply_are_not_used(changes: str) -> None:
    """Changes from another snapshot than the one the cache saw last, or that miss jobs
    that went (the counts disagree): the cache compares every job instead."""
    for seed in range(3000, 3030):
        run_sequence(seed, cycles=12, changes=changes)


@pytest.mark.parametrize("seed", range(1000, 1010))
def test_quiet_steady_state_decides_as_the_reference(seed: int) -> None:
    """Long runs with little change between cycles: the state the cache is for."""
    run_sequence(seed, cycles=40, churn=0.2)


def test_one_cache_across_unrelated_clusters() -> None:
    """A cache handed a cluster it has never seen (a new policy, other nodes, other jobs)
    still decides as the reference: it keeps nothing that is not derived from inputs."""
    cache = DecideCache()
    for seed in range(2000, 2060):
        world = random_world(random.Random(seed))
        want = reference_core.decide(world.snapshot, world.policy, world.now)
        got = decide(world.snapshot, world.policy, world.now, cache)
        assert_same(got, want, f"seed {seed}")


def test_the_suite_sees_every_kind_of_decision() -> None:
    """The generator is worth something only if the plans it leads to start, grow,
    shrink, preempt (for reclaim and by priority), hold GPUs, and reserve."""
    seen: set[str] = set()
    for seed in range(0, 120):
        rng = random.Random(seed)
        world = random_world(rng)
        for _ in range(12):
            plan = reference_core.decide(world.snapshot, world.policy, world.now)
            seen |= {"start"} if plan.starts else set()
            seen |= {"grow"} if plan.grows else set()
            seen |= {"shrink"} if plan.shrinks else set()
            seen |= {p.cause for p in plan.preemptions}
            seen |= {"held"} if plan.held else set()
            seen |= {"pools"} if plan.pools else set()
            texts = " ".join(plan.pending_reasons.values())
            seen |= {"reservation"} if "holds a reservation" in texts else set()
            seen |= {"backfill"} if any("backfilled" in s.reason for s in plan.starts) else set()
            step(rng, world, plan)
    want = {"start", "grow", "shrink", "reclaim", "priority", "held", "pools", "reservation"}
    want.add("backfill")
    assert want <= seen, want - seen


def test_a_cycle_that_raises_leaves_no_half_updated_cache() -> None:
    """A cycle cut short (here: a snapshot the core cannot read) empties the cache, so
    the next cycle builds it again from its own inputs and decides as the reference."""
    rng = random.Random(7)
    world = random_world(rng)
    cache = DecideCache()
    decide(world.snapshot, world.policy, world.now, cache)
    broken = replace(world.snapshot, jobs=(*world.snapshot.jobs, None))  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        decide(broken, world.policy, world.now, cache)
    want = reference_core.decide(world.snapshot, world.policy, world.now)
    assert_same(decide(world.snapshot, world.policy, world.now, cache), want, "after a failure")
