"""Pools and GPU types in the core (issue 13, item 3; docs/pools.md): entitlement,
admission, reclaim and placement per pool, jobs that ask for a pool, a GPU type or any."""

from __future__ import annotations

import pytest

from schedulerd.core import (
    ConsumerPath,
    GpuSlot,
    Job,
    JobId,
    JobPhase,
    Node,
    NodeName,
    Snapshot,
    decide,
)
from schedulerd.policy import load_policy

# SEMANTICS' worked example in pool a100 (owned 4/4/0, shares 1:3:1); other terms in h100.
POLICY = load_policy(
    """
version: 1
consumers:
  a: {owned: 4, share: 1, grace: 0s, pools: {h100: {owned: 0}}}
  b: {owned: 4, share: 3, grace: 0s, pools: {h100: {owned: 8, share: 1, limit: 8}}}
  c: {owned: 0, share: 1, grace: 0s}
"""
)


def nodes(pool: str, count: int, gpu_type: str = "", prefix: str = "") -> tuple[Node, ...]:
    return tuple(
        Node(NodeName(f"{prefix or pool}-{i}"), tuple(range(8)), pool=pool, gpu_type=gpu_type)
        for i in range(count)
    )


TWO_POOLS = nodes("a100", 2, "a100") + nodes("h100", 2, "h100")


class Jobs:
    def __init__(self) -> None:
        self.n = 0

    def pending(self, consumer: str, gpus: int = 1, pool: str | None = None) -> Job:
        self.n += 1
        return Job(
            JobId(self.n), ConsumerPath(consumer), "u", gpus, gpus, 0, self.n,
            JobPhase.PENDING, pool=pool,
        )  # fmt: skip

    def running(self, consumer: str, slots: list[GpuSlot], pool: str | None = None) -> Job:
        self.n += 1
        return Job(
            JobId(self.n), ConsumerPath(consumer), "u", len(slots), len(slots), 0, self.n,
            JobPhase.RUNNING, held=tuple(slots), started_at=0.0, pool=pool,
        )  # fmt: skip


def slots(node: str, *indexes: int) -> list[GpuSlot]:
    return [GpuSlot(NodeName(node), i) for i in indexes]


def pool_of(plan_slots: tuple[GpuSlot, ...]) -> set[str]:
    return {s.node.rsplit("-", 1)[0] for s in plan_slots}


def test_entitlements_per_pool_follow_the_worked_example() -> None:
    js = Jobs()
    # Large backlogs everywhere, each job bound to one pool.
    jobs = [js.pending(c, pool=p) for p in ("a100", "h100") for c in ["/a", "/b", "/c"] * 20]
    plan = decide(Snapshot(TWO_POOLS, tuple(jobs)), POLICY, 0.0)
    a100 = {p: round(s.entitlement, 3) for p, s in plan.pools["a100"].items()}
    assert (a100["/a"], a100["/b"], a100["/c"]) == (5.6, 8.8, 1.6)
    # h100: /b owns 8 (its limit too); the other 8 are split 1:1:1 by share, /b capped.
    h100 = {p: round(s.entitlement, 3) for p, s in plan.pools["h100"].items()}
    assert (h100["/a"], h100["/b"], h100["/c"]) == (4.0, 8.0, 4.0)
    # The whole-cluster view sums the pools.
    assert round(plan.consumers["/a"].entitlement, 3) == 9.6
    assert plan.consumers["/a"].pending_jobs + plan.consumers["/a"].running_jobs == 40


def test_the_second_worked_example_holds_in_one_pool_while_the_other_is_busy() -> None:
    js = Jobs()
    busy = [js.running("/c", slots(f"a100-{n}", *range(8))) for n in (0, 1)]
    # /b wants 6 in h100 only; /a and /c have large h100 backlogs.
    pol = load_policy(
        "version: 1\nconsumers:\n  a: {owned: 4, share: 1}\n  b: {owned: 4, share: 3}\n"
        "  c: {owned: 0, share: 1}\n"
    )
    jobs = [js.pending("/b", 6, "h100")]
    jobs += [js.pending(c, pool="h100") for c in ("/a", "/c") * 20]
    plan = decide(Snapshot(TWO_POOLS, (*busy, *jobs)), pol, 0.0)
    h100 = {p: round(s.entitlement, 3) for p, s in plan.pools["h100"].items()}
    assert (h100["/a"], h100["/b"], h100["/c"]) == (7.0, 6.0, 3.0)
    assert plan.pools["a100"]["/c"].allocation == 16


def test_a_job_for_h100_waits_for_h100_while_a100_gpus_are_free() -> None:
    js = Jobs()
    full = [js.running("/b", slots(f"h100-{n}", *range(8))) for n in (0, 1)]
    want = js.pending("/b", 2, pool="h100")
    plan = decide(Snapshot(TWO_POOLS, (*full, want)), POLICY, 0.0)
    assert plan.starts == ()
    assert plan.pending_reasons[want.id].startswith("in pool h100: ")
    # The same job for any pool starts on a100 at once.
    anywhere = js.pending("/b", 2)
    plan = decide(Snapshot(TWO_POOLS, (*full, anywhere)), POLICY, 0.0)
    assert [pool_of(s.slots) for s in plan.starts] == [{"a100"}]


def test_a_gpu_type_selects_nodes_of_pools_named_otherwise() -> None:
    js = Jobs()
    cluster = nodes("train", 1, "h100") + nodes("infer", 1, "l40s")
    pol = load_policy("version: 1\nconsumers:\n  a: {}\n")
    plan = decide(Snapshot(cluster, (js.pending("/a", 4, pool="h100"),)), pol, 0.0)
    assert [pool_of(s.slots) for s in plan.starts] == [{"train"}]
    plan = decide(Snapshot(cluster, (js.pending("/a", 4, pool="infer"),)), pol, 0.0)
    assert [pool_of(s.slots) for s in plan.starts] == [{"infer"}]


def test_a_job_for_a_pool_no_node_has_waits_with_a_reason() -> None:
    js = Jobs()
    job = js.pending("/a", 1, pool="b200")
    plan = decide(Snapshot(TWO_POOLS, (job,)), POLICY, 0.0)
    assert plan.starts == ()
    assert "no node has that pool or GPU type" in plan.pending_reasons[job.id]
    assert "a100, h100" in plan.pending_reasons[job.id]


def test_reclaim_stays_inside_the_pool() -> None:
    js = Jobs()
    # /c borrows all of both pools with 1-GPU jobs; /b owns 8 of h100 and asks there.
    borrowed = [
        js.running("/c", slots(f"{p}-{n}", i)) for p in ("a100", "h100") for n in (0, 1)
        for i in range(8)
    ]  # fmt: skip
    want = js.pending("/b", 4, pool="h100")
    plan = decide(Snapshot(TWO_POOLS, (*borrowed, want)), POLICY, 100.0)
    by_id = {j.id: j for j in borrowed}
    victims = [by_id[p.job_id] for p in plan.preemptions]
    assert len(victims) == 4
    assert all(pool_of(v.held) == {"h100"} for v in victims)


def test_a_job_for_any_pool_reclaims_only_in_its_last_pool() -> None:
    """A job that may run in both pools takes free GPUs in either, but reclaims only in
    the last (name order): reclaiming in a100 and then starting in h100 would stop
    a100's borrowers for nothing."""
    js = Jobs()
    borrowed = [js.running("/c", slots(f"a100-{n}", i)) for n in (0, 1) for i in range(8)]
    borrowed += [js.running("/c", slots(f"h100-{n}", i)) for n in (0, 1) for i in range(8)]
    want = js.pending("/a", 2)  # /a owns 4 of a100, none of h100
    plan = decide(Snapshot(TWO_POOLS, (*borrowed, want)), POLICY, 100.0)
    by_id = {j.id: j for j in borrowed}
    victims = [by_id[p.job_id] for p in plan.preemptions]
    assert victims and all(pool_of(v.held) == {"h100"} for v in victims)
    assert plan.pending_reasons[want.id].startswith("in pool h100: ")


def test_a_job_for_any_pool_that_starts_in_the_first_pool_reclaims_nowhere() -> None:
    js = Jobs()
    free_a100 = [js.running("/c", slots("a100-0", *range(8)))]  # a100-1 is free
    borrowed = [js.running("/c", slots(f"h100-{n}", i)) for n in (0, 1) for i in range(8)]
    want = js.pending("/a", 2)
    plan = decide(Snapshot(TWO_POOLS, (*free_a100, *borrowed, want)), POLICY, 100.0)
    assert [pool_of(s.slots) for s in plan.starts] == [{"a100"}]
    assert plan.preemptions == ()


@pytest.mark.parametrize("pool", ["a100", "h100"])
def test_limits_hold_per_pool(pool: str) -> None:
    js = Jobs()
    # /b's limit is 8 in h100 only: 12 of its 1-GPU jobs for h100 start 8; for a100, 12.
    jobs = [js.pending("/b", 1, pool=pool) for _ in range(12)]
    plan = decide(Snapshot(TWO_POOLS, tuple(jobs)), POLICY, 0.0)
    assert len(plan.starts) == (8 if pool == "h100" else 12)


def test_a_running_job_counts_in_its_own_pool() -> None:
    js = Jobs()
    running = js.running("/a", slots("h100-0", 0, 1, 2))
    plan = decide(Snapshot(TWO_POOLS, (running,)), POLICY, 0.0)
    assert plan.pools["h100"]["/a"].allocation == 3
    assert plan.pools["a100"]["/a"].allocation == 0
    assert plan.consumers["/a"].allocation == 3
    assert plan.consumers["/a"].running_jobs == 1


def test_one_pool_plans_as_before_pools_existed() -> None:
    """A cluster of one pool: no per-pool breakdown, reasons without a pool prefix."""
    js = Jobs()
    job = js.pending("/a", 9)
    plan = decide(Snapshot(nodes("a100", 1, "a100"), (job,)), POLICY, 0.0)
    assert plan.pools == {}
    assert not plan.pending_reasons[job.id].startswith("in pool")


def test_each_pool_is_placed_in_its_own_nodes() -> None:
    js = Jobs()
    jobs = [js.pending("/a", 8, pool=p) for p in ("a100", "h100", "a100", "h100")]
    plan = decide(Snapshot(TWO_POOLS, tuple(jobs)), POLICY, 0.0)
    wanted = {j.id: j.pool for j in jobs}
    assert len(plan.starts) == 4
    assert all(pool_of(s.slots) == {wanted[s.job_id]} for s in plan.starts)
