"""An outside reviewer's attacks on pools, GPU types and time windows (docs/pools.md,
docs/policy.md "Time-based plans"). Each xfail(strict) test is a bug found: a minimal
case that fails now and should pass once fixed; the unmarked ones held."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedulerd.cli.main import main as schedctl
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
from schedulerd.core.submission import ClusterShape, check_submission
from schedulerd.policy import PolicyError, load_policy

THURSDAY = 0.0  # 1970-01-01 00:00 UTC
SATURDAY = 2 * 86400.0


def node(name: str, pool: str, gpu_type: str, gpus: int = 8) -> Node:
    return Node(NodeName(name), tuple(range(gpus)), pool=pool, gpu_type=gpu_type)


def pending(i: int, consumer: str, gpus: int, pool: str | None = None) -> Job:
    return Job(JobId(i), ConsumerPath(consumer), "u", gpus, gpus, 0, i, JobPhase.PENDING, pool=pool)


def running(i: int, consumer: str, held: list[GpuSlot], pool: str | None = None) -> Job:
    n = len(held)
    return Job(
        JobId(i), ConsumerPath(consumer), "u", n, n, 0, i, JobPhase.RUNNING,
        held=tuple(held), started_at=0.0, pool=pool,
    )  # fmt: skip


def slots(name: str, *indexes: int) -> list[GpuSlot]:
    return [GpuSlot(NodeName(name), i) for i in indexes]


# -- a GPU type inside a pool of mixed types ---------------------------------------
# Found: a job for type h100 was placed on the a100 node of a mixed pool. The rule now
# (docs/pools.md): a type names the pools made only of its GPUs; a mixed pool is not one.


def test_a_gpu_type_does_not_select_a_pool_of_mixed_types() -> None:
    cluster = (node("a-0", "train", "a100"), node("h-0", "train", "h100"))
    pol = load_policy("version: 1\nconsumers:\n  a: {}\n")
    job = pending(1, "/a", 4, pool="h100")
    plan = decide(Snapshot(cluster, (job,)), pol, THURSDAY)
    assert plan.starts == ()
    assert "no node has that pool or GPU type" in plan.pending_reasons[job.id]


def test_a_gpu_type_selects_only_the_pools_made_of_it() -> None:
    cluster = (
        node("a-0", "train", "a100"),
        node("h-0", "train", "h100"),
        node("h-1", "fast", "h100"),
        node("l-0", "infer", "l40s"),
    )
    pol = load_policy("version: 1\nconsumers:\n  a: {}\n")
    plan = decide(Snapshot(cluster, (pending(1, "/a", 4, pool="h100"),)), pol, THURSDAY)
    assert [{s.node for s in st.slots} for st in plan.starts] == [{"h-1"}]


def test_submission_refuses_a_type_found_only_in_a_mixed_pool() -> None:
    pol = load_policy("version: 1\nconsumers:\n  a: {}\n")
    shape = ClusterShape([8, 8], [("train", "a100"), ("train", "h100")])
    error = check_submission(pol, shape, "/a", "u", 4, 4, "h100")
    assert error is not None and "no node has pool or GPU type 'h100'" in error
    assert check_submission(pol, shape, "/a", "u", 12, 12, "train") is None


# -- windows and per-pool terms ------------------------------------------------------
# Found: a consumer's window did not reach the pools another consumer names, and a pool's
# fixed limit was read through a window's. Until windows change per-pool terms, a policy
# may not combine them: refused at load, with the line and key.


@pytest.mark.parametrize(
    "text",
    [
        """
version: 1
consumers:
  vision:
    owned: 0
    windows:
      - when: "daily 00:00-24:00"
        owned: 8
  nlp:
    pools: {h100: {share: 2}}
""",
        """
version: 1
consumers:
  a:
    limit: 2
    pools: {h100: {limit: 4}}
    windows:
      - {when: "daily 00:00-24:00", limit: 12}
""",
    ],
)
def test_windows_and_pool_terms_in_one_policy_are_refused(text: str) -> None:
    with pytest.raises(PolicyError) as e:
        load_policy(text, "p.yaml")
    assert "time windows cannot be combined with per-pool terms" in str(e.value)
    assert ".windows[0]" in str(e.value) or ".windows" in str(e.value)


# -- running jobs across pools, nodes that changed pool or vanished -----------------


def test_a_job_spanning_two_pools_keeps_its_gpus_in_both() -> None:
    pol = load_policy("version: 1\nconsumers:\n  a: {}\n  b: {}\n")
    cluster = (node("a-0", "a100", "a100"), node("h-0", "h100", "h100"))
    big = running(1, "/a", slots("a-0", *range(8)) + slots("h-0", *range(8)))
    plan = decide(Snapshot(cluster, (big, pending(2, "/b", 8))), pol, THURSDAY)
    held = set(big.held)
    given = [s for st in plan.starts for s in st.slots] + [s for g in plan.grows for s in g.slots]
    assert not held & set(given)


def test_a_running_job_whose_nodes_are_all_gone_does_not_crash_the_cycle() -> None:
    pol = load_policy("version: 1\nconsumers:\n  a: {}\n  b: {}\n")
    jobs = (running(1, "/a", slots("gone-0", 0, 1), pool="h100"), pending(2, "/b", 1, "h100"))
    plan = decide(Snapshot((), jobs), pol, THURSDAY)
    assert plan.starts == ()
    assert 2 in plan.pending_reasons


def test_a_running_job_on_a_forgotten_node_counts_somewhere() -> None:
    # Held: with some node left, the vanished job's GPUs stay its consumer's allocation.
    pol = load_policy("version: 1\nconsumers:\n  a: {}\n  b: {}\n")
    cluster = (node("a-0", "a100", "a100"), node("h-0", "h100", "h100"))
    gone = running(1, "/a", slots("gone-0", 0, 1), pool="h100")
    plan = decide(Snapshot(cluster, (gone, pending(2, "/b", 1))), pol, THURSDAY)
    assert plan.consumers[ConsumerPath("/a")].allocation == 2
    assert len(plan.starts) == 1


# -- bounds -------------------------------------------------------------------------


def test_a_policy_naming_thousands_of_pools_is_refused_quickly() -> None:
    lines = ["version: 1", "consumers:"]
    k = 0
    for c in range(60):
        lines += [f"  c{c}:", "    pools:"]
        for _ in range(64):
            lines.append(f"      p{k}:")
            k += 1
    text = "\n".join(lines) + "\n"
    with pytest.raises(PolicyError, match="more than 64 pools in one policy"):
        load_policy(text)


# -- window syntax edge cases that held ----------------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        "daily 24:00-00:00",
        "daily 00:00-00:00",
        "daily 10:00-10:00",
        "Mon 25:00-26:00",
        "Mon 10:00-24:01",
        "daily 9:00-10:00",
        "daily 00:00-24:00 extra",
        "Mon- 01:00-02:00",
        "Mon 24:00-01:00",
    ],
)
def test_bad_windows_are_refused_with_the_key(when: str) -> None:
    text = f'version: 1\nconsumers:\n  a:\n    windows:\n      - when: "{when}"\n        owned: 1\n'
    with pytest.raises(PolicyError, match=r"consumers\.a\.windows"):
        load_policy(text)


@pytest.mark.parametrize(
    ("when", "days"),
    [("Mon-Mon 10:00-11:00", 1), ("Sun-Sat 00:00-01:00", 127), ("mon,MON 01:00-02:00", 1)],
)
def test_odd_but_valid_day_ranges(when: str, days: int) -> None:
    text = f'version: 1\nconsumers:\n  a:\n    windows:\n      - when: "{when}"\n        owned: 1\n'
    assert load_policy(text).consumers[ConsumerPath("/a")].windows[0].days == days


# -- a job for several pools: only its last pool may reclaim --------------------------
# Found: a job for any pool counted in a100's demand, raising /b's entitlement there,
# while only h100 could reclaim for it: /b sat below an entitlement nothing served. The
# rule now (core/pools.py): a job counts in the demand of the pool where it may reclaim.


def test_a_job_for_any_pool_counts_only_where_it_may_reclaim() -> None:
    pol = load_policy("version: 1\nconsumers:\n  b: {grace: 0s}\n  c: {grace: 0s}\n")
    cluster = (node("a100-0", "a100", "a100"), node("h100-0", "h100", "h100"))
    jobs = [running(1 + i, "/c", slots("a100-0", i)) for i in range(8)]
    jobs += [running(9 + i, "/b", slots("h100-0", i)) for i in range(8)]
    want = pending(17, "/b", 1)  # any pool; its last pool is h100
    plan = decide(Snapshot(cluster, (*jobs, want)), pol, 100.0)
    a100 = plan.pools["a100"][ConsumerPath("/b")]
    h100 = plan.pools["h100"][ConsumerPath("/b")]
    assert (a100.demand, a100.entitlement) == (0, 0.0)  # no promise in a100
    assert h100.demand == 9 and h100.allocation >= int(h100.entitlement)
    # Every consumer below floor(entitlement) with demand in a pool is served there.
    for pool, states in plan.pools.items():
        for path, st in states.items():
            if path != "/" and st.allocation < int(st.entitlement):
                assert plan.preemptions or plan.starts, (pool, path)
    assert plan.pending_reasons[want.id].startswith("in pool h100: ")


def test_the_same_job_bound_to_a100_reclaims_there() -> None:
    # Held: bound to one pool, the promise holds.
    pol = load_policy("version: 1\nconsumers:\n  b: {grace: 0s}\n  c: {grace: 0s}\n")
    cluster = (node("a100-0", "a100", "a100"), node("h100-0", "h100", "h100"))
    jobs = [running(1 + i, "/c", slots("a100-0", i)) for i in range(8)]
    jobs += [running(9 + i, "/b", slots("h100-0", i)) for i in range(8)]
    plan = decide(Snapshot(cluster, (*jobs, pending(17, "/b", 1, "a100"))), pol, 100.0)
    assert len(plan.preemptions) == 1


# -- schedctl policy apply --dry-run --at --------------------------------------------


@pytest.mark.parametrize("at", ["0001-01-01T00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_schedctl_at_out_of_range_is_a_clear_error(tmp_path: Path, at: str) -> None:

    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nconsumers:\n  a: {}\n")
    args = ["--daemon", "127.0.0.1:1", "policy", "apply", str(policy), "--dry-run", "--at", at]
    with pytest.raises(SystemExit) as done:
        schedctl(args)
    assert "--at" in str(done.value.code)


def test_an_any_pool_job_is_not_refused_for_a_limit_a_named_pool_lifts_before_nodes() -> None:
    pol = load_policy("version: 1\nconsumers:\n  a: {limit: 2, pools: {h100: {limit: 8}}}\n")
    with_node = ClusterShape([8], [("h100", "h100")])
    assert check_submission(pol, with_node, "/a", "u", 6, 6, "") is None
    assert check_submission(pol, ClusterShape(()), "/a", "u", 6, 6, "") is None
