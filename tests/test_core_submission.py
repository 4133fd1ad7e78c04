"""Refusal at submit time of jobs that can never run (SEMANTICS: the cycle, step 2)."""

from __future__ import annotations

from typing import Any

import pytest

from schedulerd.core import (
    ROOT,
    ClusterShape,
    ConsumerPath,
    ConsumerPolicy,
    Policy,
    check_submission,
)
from schedulerd.core.submission import MAX_JOB_GPUS


def tree(*specs: tuple[str, dict[str, Any]]) -> Policy:
    consumers = {ROOT: ConsumerPolicy(ROOT)}
    for path, fields in specs:
        consumers[ConsumerPath(path)] = ConsumerPolicy(ConsumerPath(path), **fields)
    return Policy(consumers=consumers)


POLICY = tree(
    ("/research", dict(limit=12, users=frozenset({"alice", "bob"}))),
    ("/research/vision", dict(limit=8)),
    ("/research/nlp", dict(users=frozenset({"carol"}))),
    ("/ops", dict(owned=0, share=0, borrow=False)),
    ("/infra", dict(owned=2, share=0, borrow=False)),
    ("/frozen", dict(share=0, borrow=False)),
    ("/frozen/x", {}),
    ("/spare", dict(share=0)),
    ("/batch", {}),
)
SHAPE = ClusterShape(node_gpus=(8, 8))  # 16 GPUs on 2 nodes


REFUSED = [
    pytest.param(
        "/nope",
        "alice",
        1,
        1,
        "consumer '/nope' does not exist; submit to one of: /research/vision, "
        "/research/nlp, /ops, /infra, /frozen/x, /spare, /batch",
        id="unknown-consumer-lists-the-leaves",
    ),
    pytest.param(
        "/research",
        "alice",
        1,
        1,
        "consumer /research is a parent; jobs go to its leaves: /research/nlp, /research/vision",
        id="parent-consumer-names-its-children",
    ),
    pytest.param(
        "/research/vision",
        "dave",
        1,
        1,
        "user 'dave' may not submit to /research/vision (allowed: alice, bob)",
        id="user-not-allowed-inherited-list",
    ),
    pytest.param(
        "/research/nlp",
        "alice",
        1,
        1,
        "user 'alice' may not submit to /research/nlp (allowed: carol)",
        id="user-not-allowed-own-list-overrides-the-parent",
    ),
    pytest.param("/batch", "alice", 0, 0, "a job needs at least 1 GPU", id="zero-gpus"),
    pytest.param(
        "/batch", "alice", 4, 2, "GPU range 4:2 is empty (max below min)", id="max-below-min"
    ),
    pytest.param(
        "/research/vision",
        "alice",
        9,
        9,
        "can never fit: /research/vision has a limit of 8 GPUs and the job needs 9",
        id="over-the-consumer-limit",
    ),
    pytest.param(
        "/research/nlp",
        "carol",
        13,
        13,
        "can never fit: /research has a limit of 12 GPUs and the job needs 13",
        id="over-a-parent-limit",
    ),
    pytest.param(
        "/batch",
        "alice",
        17,
        17,
        "can never fit: the cluster has 16 GPUs on 2 node(s) and the job needs 17",
        id="bigger-than-the-whole-cluster",
    ),
    pytest.param(
        "/ops",
        "alice",
        1,
        1,
        "can never run: /ops (or a parent) owns no GPUs, has share 0 and may not borrow",
        id="share-0-owned-0-borrow-false",
    ),
    pytest.param(
        "/frozen/x",
        "alice",
        1,
        1,
        "can never run: /frozen/x (or a parent) owns no GPUs, has share 0 and may not borrow",
        id="share-0-owned-0-borrow-false-parent",
    ),
    pytest.param(
        "/infra",
        "alice",
        3,
        3,
        "can never run: /infra owns 2 GPUs, has share 0 and may not borrow; the job needs 3",
        id="share-0-borrow-false-job-above-owned",
    ),
]


@pytest.mark.parametrize(("consumer", "user", "gmin", "gmax", "message"), REFUSED)
def test_refused(consumer: str, user: str, gmin: int, gmax: int, message: str) -> None:
    assert check_submission(POLICY, SHAPE, consumer, user, gmin, gmax) == message


ACCEPTED = [
    pytest.param("/research/vision", "alice", 8, SHAPE, id="at-the-limit"),
    pytest.param("/research/nlp", "carol", 12, SHAPE, id="at-a-parent-limit"),
    pytest.param("/batch", "anyone", 16, SHAPE, id="whole-cluster-spanning-nodes"),
    pytest.param("/infra", "alice", 2, SHAPE, id="share-0-borrow-false-within-owned"),
    pytest.param("/spare", "alice", 4, SHAPE, id="share-0-may-borrow"),
    pytest.param("/batch", "alice", 100, ClusterShape(()), id="no-node-known-yet"),
    pytest.param("/batch", "alice", 3, ClusterShape((1, 1, 1)), id="exactly-the-cluster"),
]


@pytest.mark.parametrize(("consumer", "user", "gpus", "shape"), ACCEPTED)
def test_accepted(consumer: str, user: str, gpus: int, shape: ClusterShape) -> None:
    assert check_submission(POLICY, shape, consumer, user, gpus, gpus) is None


def test_elastic_range_is_accepted_and_its_min_is_what_must_fit() -> None:
    shape = ClusterShape((4, 4))
    assert check_submission(POLICY, shape, "/batch", "alice", 2, 8) is None
    refused = check_submission(POLICY, shape, "/batch", "alice", 9, 12)
    assert refused is not None and "the job needs 9" in refused


def test_an_elastic_max_above_the_cluster_is_refused() -> None:
    # A max it could never grow into is refused, not clamped: the job is not what was
    # asked for, and a max of 2**32 - 1 made every scheduling cycle work for it.
    refused = check_submission(POLICY, SHAPE, "/batch", "alice", 1, 4294967295)
    assert refused == (
        "can never fit: elastic max 4294967295 is above the cluster's 16 GPUs "
        "(on 2 node(s)); ask for at most 16"
    )
    assert check_submission(POLICY, SHAPE, "/batch", "alice", 1, 17) is not None
    assert check_submission(POLICY, SHAPE, "/batch", "alice", 1, 16) is None


def test_without_a_node_counts_are_bounded_by_the_absolute_cap() -> None:
    none = ClusterShape(())
    assert check_submission(POLICY, none, "/batch", "alice", 1, MAX_JOB_GPUS) is None
    elastic = check_submission(POLICY, none, "/batch", "alice", 1, MAX_JOB_GPUS + 1)
    assert elastic == "can never fit: elastic max 1000001 is above any cluster's 1,000,000 GPUs"
    rigid = check_submission(POLICY, none, "/batch", "alice", 2**32, 2**32)
    assert rigid is not None and "the job needs 4294967296" in rigid


def test_everyone_may_submit_when_no_list_is_set() -> None:
    pol = tree(("/a", {}))
    assert check_submission(pol, SHAPE, "/a", "whoever", 1, 1) is None


def test_an_empty_user_list_closes_a_consumer() -> None:
    pol = tree(("/a", dict(users=frozenset())))
    refusal = check_submission(pol, SHAPE, "/a", "alice", 1, 1)
    assert refusal is not None
    assert refusal.startswith("user 'alice' may not submit to /a")


def test_cluster_shape_total_counts_every_node() -> None:
    assert ClusterShape((8, 4, 2)).total == 14
    assert ClusterShape(()).total == 0
