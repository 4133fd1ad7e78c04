"""Pools in the simulator (schedulerd/sim/pools.py): node groups per pool, owned GPUs
split per pool, jobs bound to a pool, the measures per pool (issue 13: a two-pool replay)."""

from __future__ import annotations

import pytest

from schedulerd.core import ConsumerPath, Plan
from schedulerd.sim.engine import Engine, SimConfig
from schedulerd.sim.pools import (
    PoolRecorder,
    PoolSpec,
    bind_jobs,
    build_nodes,
    parse_pools,
    pool_table,
    with_pool_terms,
)
from schedulerd.sim.schedulers import FairShare
from schedulerd.sim.setup import PolicySettings, build_policy
from schedulerd.sim.workload import backlog_scenario

POOLS = (PoolSpec("a100", 2, 4), PoolSpec("h100", 1, 4))


def test_pools_parse_and_refuse_with_the_item_named() -> None:
    assert parse_pools("a100:16x8,h100:8x8") == (PoolSpec("a100", 16, 8), PoolSpec("h100", 8, 8))
    for bad in ("a100", "a100:16", "a100:0x8", ":2x8", "a:1x1,a:1x1"):
        with pytest.raises(ValueError):
            parse_pools(bad)


def test_nodes_carry_their_pool_and_type() -> None:
    nodes = build_nodes(POOLS)
    assert [(n.name, n.pool, n.gpu_type, len(n.gpus)) for n in nodes] == [
        ("a100-n0", "a100", "a100", 4),
        ("a100-n1", "a100", "a100", 4),
        ("h100-n0", "h100", "h100", 4),
    ]


def test_owned_gpus_are_split_per_pool_by_the_same_weights() -> None:
    weights = {"/team0": 0.25, "/team1": 0.75}
    settings = PolicySettings()
    policy = with_pool_terms(build_policy(weights, 12, settings), weights, POOLS, settings)
    a100 = policy.in_pool("a100").consumers
    h100 = policy.in_pool("h100").consumers
    assert (a100[ConsumerPath("/team0")].owned, a100[ConsumerPath("/team1")].owned) == (2, 6)
    assert (h100[ConsumerPath("/team0")].owned, h100[ConsumerPath("/team1")].owned) == (1, 3)


def test_a_two_pool_replay_keeps_bound_jobs_in_their_pool() -> None:
    wl = bind_jobs(backlog_scenario((1.0, 3.0), 60, 20.0), POOLS, 0.5, seed=3)
    bound = {j.id: j.pool for j in wl.jobs if j.pool is not None}
    assert 30 <= len(bound) <= 90  # about half of the 120
    assert {p for p in bound.values()} == {"a100", "h100"}
    weights = {"/team0": 0.25, "/team1": 0.75}
    settings = PolicySettings(owned_fraction=0.0)
    policy = with_pool_terms(build_policy(weights, 12, settings), weights, POOLS, settings)
    nodes = build_nodes(POOLS)
    pool_of = {n.name: n.pool for n in nodes}
    recorder = PoolRecorder(nodes, policy, wl)
    landed: dict[int, str] = {}

    def on_cycle(now: float, plan: Plan) -> None:
        recorder(now, plan)
        for s in plan.starts:
            landed[s.job_id] = pool_of[s.slots[0].node]

    engine = Engine(wl, nodes, policy, FairShare(policy, 12), SimConfig(), on_cycle=on_cycle)
    result = engine.run()
    recorder.finish(engine.now)
    assert result.unfinished == 0 and len(landed) == len(wl.jobs)
    assert all(landed[i] == p for i, p in bound.items())
    a100, h100 = recorder.measures["a100"], recorder.measures["h100"]
    assert len(a100.waits) + len(h100.waits) == len(wl.jobs)
    # A backlog the whole run: both pools stay busy and fair (shares 1:3 in each).
    assert a100.allocation_while_demand > 0.8 and h100.allocation_while_demand > 0.8
    assert a100.allocation_while_demand <= 1.0 and h100.allocation_while_demand <= 1.0
    assert a100.fairness_error < 0.2 and h100.fairness_error < 0.2
    text = pool_table(recorder)
    assert text.splitlines()[0].split()[:2] == ["pool", "GPUs"]
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["a100", "h100"]
