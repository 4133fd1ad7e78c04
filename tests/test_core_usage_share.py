"""Usage lowering a consumer's share of the surplus (SEMANTICS: usage decay; the policy's
`usage_weight`, off by default): effective share = share / (1 + k·u), u the consumer's
fraction of its siblings' decayed usage. Owned GPUs are never lowered."""

from __future__ import annotations

import pytest

from schedulerd.core import ConsumerPath, Job, JobId, JobPhase, Node, NodeName, Snapshot, decide
from schedulerd.policy import PolicyError, load_policy

TREE = """
version: 1
{weight}
consumers:
  a: {{owned: 2, share: 1}}
  b: {{owned: 2, share: 1}}
"""
NODES = tuple(Node(NodeName(f"n{i}"), tuple(range(8))) for i in range(2))


def backlog() -> tuple[Job, ...]:
    return tuple(
        Job(JobId(i), ConsumerPath(c), "u", 1, 1, 0, i, JobPhase.PENDING)
        for i, c in enumerate(["/a", "/b"] * 20)
    )


def entitlements(weight: str, usage: dict[str, float]) -> tuple[float, float]:
    policy = load_policy(TREE.format(weight=weight))
    user_usage = {(ConsumerPath(c), "u"): used for c, used in usage.items()}
    plan = decide(Snapshot(NODES, backlog(), user_usage), policy, 0.0)
    return (
        round(plan.consumers[ConsumerPath("/a")].entitlement, 3),
        round(plan.consumers[ConsumerPath("/b")].entitlement, 3),
    )


def test_off_by_default_usage_changes_nothing() -> None:
    assert entitlements("", {"/a": 1e6, "/b": 0.0}) == (8.0, 8.0)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # /a used everything: share 1/(1+1) = 0.5 against /b's 1; the 12 GPUs of surplus
        # go 4:8 on top of the 2 each owns.
        pytest.param({"/a": 1000.0, "/b": 0.0}, (6.0, 10.0), id="one-used-all"),
        # Equal use: equal shares again.
        pytest.param({"/a": 500.0, "/b": 500.0}, (8.0, 8.0), id="equal-use"),
        # No usage yet: plain shares.
        pytest.param({}, (8.0, 8.0), id="no-usage"),
        # 3:1 usage: shares 1/1.75 and 1/1.25; surplus 12 split 0.571:0.8.
        pytest.param({"/a": 750.0, "/b": 250.0}, (7.0, 9.0), id="three-to-one"),
    ],
)
def test_usage_lowers_the_share_of_the_surplus(
    usage: dict[str, float], expected: tuple[float, float]
) -> None:
    assert entitlements("usage_weight: 1", usage) == expected


def test_owned_gpus_are_never_lowered() -> None:
    # A weight so large the heavy user's share is almost 0: it keeps its owned 2.
    a, b = entitlements("usage_weight: 1000000", {"/a": 1.0, "/b": 0.0})
    assert a == pytest.approx(2.0, abs=0.01) and b == pytest.approx(14.0, abs=0.01)


def test_a_negative_weight_is_refused_with_its_line() -> None:
    with pytest.raises(PolicyError) as e:
        load_policy(TREE.format(weight="usage_weight: -1"), "p.yaml")
    assert "p.yaml:3: usage_weight: must be a number from 0" in str(e.value)
