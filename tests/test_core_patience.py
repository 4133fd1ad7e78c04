"""reclaim_patience (docs/scheduling.md): reclaim acts for a waiting job only once it has
waited its consumer's patience; until then GPUs that free up by themselves may serve it.
Default 0: at once (SEMANTICS' guarantee)."""

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
from schedulerd.policy import PolicyError, load_policy

NODES = (Node(NodeName("n0"), tuple(range(4))),)


def policy(patience: str) -> str:
    return f"""
version: 1
defaults: {{grace: 0s{patience}}}
consumers:
  owner: {{owned: 4}}
  borrower: {{share: 1}}
"""


def snapshot(waited: float | None, now: float) -> Snapshot:
    borrowed = tuple(
        Job(
            JobId(i),
            ConsumerPath("/borrower"),
            "u",
            1,
            1,
            0,
            i,
            JobPhase.RUNNING,
            held=(GpuSlot(NodeName("n0"), i),),
            started_at=0.0,
        )
        for i in range(4)
    )
    since = None if waited is None else now - waited
    want = Job(
        JobId(9), ConsumerPath("/owner"), "u", 2, 2, 0, 9, JobPhase.PENDING, waiting_since=since
    )
    return Snapshot(NODES, (*borrowed, want))


@pytest.mark.parametrize(
    ("patience", "waited", "preempted"),
    [
        pytest.param("", 5.0, 2, id="no-patience-reclaims-at-once"),
        pytest.param(", reclaim_patience: 60s", 5.0, 0, id="waits-its-patience"),
        pytest.param(", reclaim_patience: 60s", 60.0, 2, id="patience-over"),
        pytest.param(", reclaim_patience: 60s", None, 2, id="since-unknown"),
    ],
)
def test_reclaim_waits_for_the_consumers_patience(
    patience: str, waited: float | None, preempted: int
) -> None:
    plan = decide(snapshot(waited, 1000.0), load_policy(policy(patience)), 1000.0)
    assert len(plan.preemptions) == preempted


def test_patience_is_inherited_and_checked() -> None:
    pol = load_policy(policy(", reclaim_patience: 5m"))
    assert pol.consumers[ConsumerPath("/owner")].reclaim_patience_s == 300.0
    with pytest.raises(PolicyError) as e:
        load_policy(policy(", reclaim_patience: soon"), "p.yaml")
    assert "p.yaml:3: defaults.reclaim_patience: must be a duration" in str(e.value)
