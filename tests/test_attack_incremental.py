"""A hostile reviewer's inputs for the incremental cycle (issue 15): changes the
plan-equality suite's generator (tests/incremental_world.py) does not make. Each
sequence carries one cache through cycles and checks every plan against the reference
core (tests/reference_core) and against a cycle without a cache, as
tests/test_core_incremental.py does."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import reference_core
from incremental_world import World, random_policy, random_world, step
from test_core_incremental import assert_same, assert_same_lookups, with_changes

from schedulerd.core import ConsumerPath, DecideCache, JobPhase, Snapshot, decide


def _mutate(rng: random.Random, world: World, kinds: tuple[str, ...]) -> None:
    """Change the world as the generator never does: a job's fields without a change of
    phase (a new value, same id, same place), a node's GPUs, pool or type, the policy
    to an equal one or back to one seen before, a consumer the policy no longer has."""
    jobs = list(world.snapshot.jobs)
    nodes = list(world.snapshot.nodes)
    kind = rng.choice(kinds)
    waiting = [i for i, j in enumerate(jobs) if j.phase is JobPhase.PENDING]
    running = [i for i, j in enumerate(jobs) if j.phase is JobPhase.RUNNING]
    leaves = list(world.policy.leaves())
    if kind == "waiting-fields" and waiting:
        i = rng.choice(waiting)
        j = jobs[i]
        field = rng.choice(["priority", "consumer", "user", "gpus", "pool", "waiting_since"])
        if field == "priority":
            jobs[i] = replace(j, priority=j.priority + rng.choice([-5, 5, 50]))
        elif field == "consumer":
            jobs[i] = replace(j, consumer=rng.choice([*leaves, ConsumerPath("/nobody")]))
        elif field == "user":
            jobs[i] = replace(j, user=rng.choice(["u0", "u1", "u2", "zz"]))
        elif field == "gpus":
            g = rng.choice([1, 2, 4, 8])
            jobs[i] = replace(j, gpus_min=g, gpus_max=max(g, j.gpus_max))
        elif field == "pool":
            pools = sorted({n.pool for n in nodes})
            jobs[i] = replace(j, pool=rng.choice([None, *pools]))
        else:
            jobs[i] = replace(j, waiting_since=world.now - rng.choice([0.0, 500.0, 5000.0]))
    elif kind == "running-fields" and running:
        i = rng.choice(running)
        j = jobs[i]
        field = rng.choice(["priority", "time_limit_s", "started_at", "preemptions", "user"])
        if field == "priority":
            jobs[i] = replace(j, priority=j.priority + rng.choice([-5, 5, 50]))
        elif field == "time_limit_s":
            jobs[i] = replace(j, time_limit_s=rng.choice([None, 60.0, 3600.0]))
        elif field == "started_at":
            jobs[i] = replace(j, started_at=world.now - rng.choice([1.0, 100.0, 10000.0]))
        elif field == "preemptions":
            jobs[i] = replace(j, preemptions=j.preemptions + 1)
        else:
            jobs[i] = replace(j, user=rng.choice(["u0", "u1", "u2", "zz"]))
    elif kind == "node" and nodes:
        i = rng.randrange(len(nodes))
        n = nodes[i]
        field = rng.choice(["gpus", "pool"])
        if field == "gpus":  # re-registered with another count of GPUs
            nodes[i] = replace(n, gpus=tuple(range(rng.choice([1, 2, 4, 8]))))
        else:
            pools = sorted({m.pool for m in nodes} | {"default"})
            p = rng.choice(pools)
            nodes[i] = replace(n, pool=p, gpu_type=p if p != "default" else "")
    elif kind == "policy":
        pools = tuple(sorted({n.pool for n in nodes} - {"default"}))
        world.policy = random_policy(random.Random(rng.randrange(50)), pools)
    world.snapshot = Snapshot(
        nodes=tuple(nodes), jobs=tuple(jobs), user_usage=world.snapshot.user_usage
    )


def _run(seed: int, cycles: int, kinds: tuple[str, ...], changes: bool) -> None:
    rng = random.Random(seed)
    world = random_world(rng)
    cache = DecideCache()
    before: Snapshot | None = None
    for cycle in range(cycles):
        want = reference_core.decide(world.snapshot, world.policy, world.now)
        given = (
            with_changes(before, world.snapshot, cycle - 1, False) if changes else world.snapshot
        )
        where = f"seed {seed}, cycle {cycle}, kinds {kinds}"
        got = decide(given, world.policy, world.now, cache)
        assert_same(got, want, where)
        assert_same_lookups(got, want, world.snapshot, where)
        before = world.snapshot
        step(rng, world, want, 0.5)
        for _ in range(rng.randint(1, 3)):
            _mutate(rng, world, kinds)


KINDS = ("waiting-fields", "running-fields", "node", "policy")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("changes", [True, False])
def test_fields_nodes_and_policies_changing_in_place(kind: str, changes: bool) -> None:
    for seed in range(5000, 5025):
        _run(seed, cycles=10, kinds=(kind,), changes=changes)


def test_everything_at_once_over_long_sequences() -> None:
    for seed in range(6000, 6006):
        _run(seed, cycles=60, kinds=KINDS, changes=bool(seed % 2))


def test_the_same_policy_object_across_a_window_boundary() -> None:
    """No job changes; only `now` moves across time windows of one unchanged policy
    object (the queues are kept by the policy's identity)."""
    for seed in range(7000, 7040):
        rng = random.Random(seed)
        world = random_world(rng)
        cache = DecideCache()
        for hours in (0, 1, 5, 8, 12, 17, 20, 23, 24, 30):
            now = world.now + hours * 3600.0
            want = reference_core.decide(world.snapshot, world.policy, now)
            got = decide(world.snapshot, world.policy, now, cache)
            assert_same(got, want, f"seed {seed}, +{hours}h")


def test_a_daemon_snapshot_taken_outside_the_loop(tmp_path: Path) -> None:
    """The daemon's snapshots carry `changes` since the one before; a snapshot taken by
    someone else between two cycles (ApplyPolicy's dry run) consumes those changes. The
    next cycle's snapshot then follows one the cache never saw: it must compare every
    job rather than apply a delta that misses what changed in between."""
    from schedulerd.daemon import nodes
    from schedulerd.daemon.plans import apply_plan
    from schedulerd.daemon.state import ClusterState
    from schedulerd.policy import load_policy
    from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, Store

    text = "version: 1\nconsumers:\n  a: {grace: 10s}\n  b: {grace: 10s}\n"
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, lambda: 1000.0)
    state.set_policy(load_policy(text, "p"), store.save_policy(text, "p", 0.0))
    nodes.register(
        state, NodeRecord("n1", "default", [GpuRecord(i, f"u{i}", "f", 0) for i in range(4)]), []
    )

    def job(consumer: str, gpus: int) -> JobRecord:
        return JobRecord(0, consumer, "u", "j", ["x"], {}, "", gpus, gpus, 0, JobState.PENDING, 0.0)

    cache = DecideCache()
    policy = state.policy
    assert policy is not None
    first = state.submit(job("/a", 2))
    state.submit(job("/b", 4))

    def cycle() -> None:
        snap = state.snapshot()
        want = reference_core.decide(snap, policy, 1000.0)
        got = decide(snap, policy, 1000.0, cache)
        assert_same(got, want, "daemon snapshot")
        apply_plan(state, got)

    cycle()
    assert first.state is JobState.RUNNING
    nodes.report(state, "n1", nodes.PartReport(first.id, 0, "exited", 0))  # ends: GPUs free
    state.submit(job("/a", 1))
    state.snapshot()  # taken outside the loop: these changes are in it, not in the next
    cycle()
    state.submit(job("/a", 1))
    cycle()
    assert sum(j.state is JobState.RUNNING for j in state.jobs.values()) >= 1
