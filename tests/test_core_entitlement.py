"""Entitlement by hierarchical water-filling (SEMANTICS: "Entitlement").

Each case names the rule it checks and states the exact numbers the rule gives.
"""

from __future__ import annotations

from typing import Any

import pytest

from schedulerd.core import ROOT, ConsumerPath, ConsumerPolicy, Policy, divide
from schedulerd.core.entitlement import subtree_demand

Spec = tuple[str, dict[str, Any]]


def policy(*specs: Spec) -> Policy:
    """A policy from (path, fields) pairs, listed parents before children."""
    consumers = {ROOT: ConsumerPolicy(ROOT)}
    for path, fields in specs:
        consumers[ConsumerPath(path)] = ConsumerPolicy(ConsumerPath(path), **fields)
    return Policy(consumers=consumers)


def demands(**by_path: int) -> dict[ConsumerPath, int]:
    """Leaf demand keyed by path; `a__b=3` means /a/b."""
    return {ConsumerPath("/" + k.replace("__", "/")): v for k, v in by_path.items()}


BIG = 1000  # a backlog larger than any cluster here

CASES = [
    pytest.param(
        policy(("/a", dict(owned=4, share=1)), ("/b", dict(owned=4, share=3)), ("/c", {})),
        16,
        demands(a=BIG, b=BIG, c=BIG),
        {"/a": 5.6, "/b": 8.8, "/c": 1.6},
        {},
        id="semantics-example-1-owned-then-surplus-by-share",
    ),
    pytest.param(
        policy(("/a", dict(owned=4, share=1)), ("/b", dict(owned=4, share=3)), ("/c", {})),
        16,
        demands(a=BIG, b=6, c=BIG),
        {"/a": 7.0, "/b": 6.0, "/c": 3.0},
        {},
        id="semantics-example-2-capped-child-rest-shared-1-1",
    ),
    pytest.param(
        policy(("/a", dict(owned=6)), ("/b", dict(owned=2))),
        10,
        demands(a=2, b=BIG),
        {"/a": 2.0, "/b": 8.0},
        {},
        id="owned-capped-by-demand",
    ),
    pytest.param(
        policy(("/a", dict(owned=2, share=0)), ("/b", {})),
        8,
        demands(a=BIG, b=BIG),
        {"/a": 2.0, "/b": 6.0},
        {},
        id="share-0-gets-owned-but-no-surplus",
    ),
    pytest.param(
        policy(("/a", dict(owned=2, share=0)), ("/b", {})),
        8,
        demands(a=BIG, b=3),
        {"/a": 2.0, "/b": 3.0},
        {},
        id="share-0-gets-no-surplus-even-when-gpus-are-left",
    ),
    pytest.param(
        policy(("/a", dict(share=3, limit=3)), ("/b", {})),
        8,
        demands(a=BIG, b=BIG),
        {"/a": 3.0, "/b": 5.0},
        {},
        id="limit-caps-and-the-rest-goes-to-others",
    ),
    pytest.param(
        policy(("/a", {}), ("/b", {}), ("/c", dict(share=2))),
        12,
        demands(a=1, b=BIG, c=BIG),
        # Round 1 offers 3, 3, 6; /a takes 1; the 2 left go 1:2 to /b and /c.
        {"/a": 1.0, "/b": 3 + 2 / 3, "/c": 6 + 4 / 3},
        {},
        id="water-filling-re-hands-what-a-capped-child-cannot-take",
    ),
    pytest.param(
        policy(("/a", {}), ("/b", {}), ("/c", {})),
        12,
        demands(a=1, b=2, c=BIG),
        {"/a": 1.0, "/b": 2.0, "/c": 9.0},
        {},
        id="water-filling-several-rounds",
    ),
    pytest.param(
        policy(("/r", dict(owned=4, lend=False)), ("/a", {})),
        8,
        demands(r=1, a=BIG),
        {"/r": 1.0, "/a": 4.0},
        {"/r": 3.0},
        id="lend-false-reserves-unused-owned-for-itself",
    ),
    pytest.param(
        policy(("/r", dict(owned=4, lend=True)), ("/a", {})),
        8,
        demands(r=1, a=BIG),
        {"/r": 1.0, "/a": 7.0},
        {},
        id="lend-true-lends-unused-owned",
    ),
    pytest.param(
        policy(("/r", dict(owned=4, lend=False)), ("/a", {})),
        8,
        demands(r=0, a=BIG),
        {"/r": 0.0, "/a": 4.0},
        {"/r": 4.0},
        id="lend-false-without-demand-reserves-all-owned",
    ),
    pytest.param(
        policy(
            ("/p", dict(owned=4, lend=False)),
            ("/p/x", dict(owned=4, lend=False)),
            ("/q", {}),
        ),
        8,
        demands(p__x=0, q=BIG),
        # /p's 4 are /p/x's 4: reserved once, by the consumer that keeps them.
        {"/p": 0.0, "/p/x": 0.0, "/q": 4.0},
        {"/p/x": 4.0},
        id="nested-reservations-count-once",
    ),
    pytest.param(
        policy(
            ("/p", dict(owned=6, lend=False)),
            ("/p/x", dict(owned=4, lend=False)),
            ("/q", {}),
        ),
        10,
        demands(p__x=0, q=BIG),
        # /p keeps its own 2 on top of /p/x's 4: 6 in all, each counted once.
        {"/p": 0.0, "/p/x": 0.0, "/q": 4.0},
        {"/p": 2.0, "/p/x": 4.0},
        id="nested-reservations-parent-keeps-its-own-on-top",
    ),
    pytest.param(
        policy(
            ("/p", dict(owned=4)),
            ("/p/x", dict(owned=4, lend=False)),
            ("/p/y", {}),
            ("/q", {}),
        ),
        12,
        demands(p__x=0, p__y=BIG, q=BIG),
        # /p lends, but all it owns is /p/x's, which does not: those 4 stay
        # reserved and /p competes for the other 8 like /q, 1:1.
        {"/p": 4.0, "/p/x": 0.0, "/p/y": 4.0, "/q": 4.0},
        {"/p/x": 4.0},
        id="reservation-of-a-child-inside-a-lending-parent",
    ),
    pytest.param(
        policy(
            ("/p", dict(owned=4)),
            ("/p/x", dict(owned=4, lend=False)),
            ("/p/y", {}),
            ("/q", {}),
        ),
        8,
        demands(p__x=0, p__y=0, q=BIG),
        # /p wants nothing, yet /p/x's reservation is not handed to /q.
        {"/p": 0.0, "/p/x": 0.0, "/p/y": 0.0, "/q": 4.0},
        {"/p/x": 4.0},
        id="reservation-under-a-lending-parent-that-wants-nothing",
    ),
    pytest.param(
        policy(
            ("/p", dict(owned=4, lend=False)),
            ("/p/x", dict(owned=2, lend=False)),
            ("/p/y", dict(owned=2)),
            ("/q", {}),
        ),
        12,
        demands(p__x=0, p__y=BIG, q=BIG),
        # /p uses all it may (through /p/y), so it keeps nothing itself; /p/x's
        # unused 2 stay reserved. Root: /p 2 + 4, /q 4. Inside /p: /p/y 2 + 4.
        {"/p": 6.0, "/p/x": 0.0, "/p/y": 6.0, "/q": 4.0},
        {"/p/x": 2.0},
        id="reservation-inside-a-lend-false-parent-that-uses-its-owned",
    ),
    pytest.param(
        policy(
            ("/p", dict(owned=4, lend=False)),
            ("/p/x", dict(owned=2, lend=False)),
            ("/p/y", dict(owned=2)),
            ("/q", {}),
        ),
        12,
        demands(p__x=0, p__y=3, q=BIG),
        # /p/y may use its 2 owned, not /p/x's: the 3rd GPU is surplus, shared with /q.
        {"/p": 3.0, "/p/x": 0.0, "/p/y": 3.0, "/q": 7.0},
        {"/p/x": 2.0},
        id="a-sibling-does-not-get-a-lend-false-child-s-owned",
    ),
    pytest.param(
        policy(("/a", dict(owned=6)), ("/b", dict(owned=2))),
        4,
        demands(a=BIG, b=BIG),
        {"/a": 3.0, "/b": 1.0},
        {},
        id="owned-beyond-capacity-shrinks-in-proportion",
    ),
    pytest.param(
        policy(("/r", dict(owned=6, lend=False)), ("/b", dict(owned=6))),
        8,
        demands(r=0, b=BIG),
        {"/r": 0.0, "/b": 4.0},
        {"/r": 4.0},
        id="owned-beyond-capacity-shrinks-reservations-too",
    ),
    pytest.param(
        policy(("/r", dict(owned=10, lend=False))),
        5,
        demands(r=4),
        # The guarantee shrinks to 5; /r uses 4 of it and reserves 1.
        {"/r": 4.0},
        {"/r": 1.0},
        id="shrunk-lend-false-owned-covers-its-demand-first",
    ),
    pytest.param(
        policy(("/p", dict(owned=10, lend=False)), ("/p/c", {})),
        5,
        demands(p__c=4),
        {"/p": 4.0, "/p/c": 4.0},
        {"/p": 1.0},
        id="shrunk-lend-false-parent-children-stay-within-it",
    ),
    pytest.param(
        policy(
            ("/x", {}),
            ("/x/1", {}),
            ("/x/2", dict(share=3)),
            ("/y", {}),
        ),
        16,
        demands(x__1=BIG, x__2=BIG, y=BIG),
        {"/x": 8.0, "/x/1": 2.0, "/x/2": 6.0, "/y": 8.0},
        {},
        id="nested-parent-entitlement-divided-among-children",
    ),
    pytest.param(
        policy(
            ("/x", dict(owned=4)),
            ("/x/1", dict(owned=4)),
            ("/x/2", {}),
            ("/y", {}),
        ),
        12,
        demands(x__1=BIG, x__2=BIG, y=BIG),
        # Root: /x g=4, R=8 split 1:1 -> /x 8, /y 4. Inside /x: /x/1 g=4, R=4 -> 2, 2.
        {"/x": 8.0, "/x/1": 6.0, "/x/2": 2.0, "/y": 4.0},
        {},
        id="nested-owned-then-surplus-at-each-level",
    ),
    pytest.param(
        policy(
            ("/p", dict(limit=5)),
            ("/p/a", {}),
            ("/p/b", {}),
            ("/q", {}),
        ),
        16,
        demands(p__a=4, p__b=4, q=BIG),
        {"/p": 5.0, "/p/a": 2.5, "/p/b": 2.5, "/q": 11.0},
        {},
        id="demand-capped-by-a-parent-limit",
    ),
    pytest.param(
        policy(("/a", {}), ("/b", {})),
        8,
        demands(a=0, b=0),
        {"/": 0.0, "/a": 0.0, "/b": 0.0},
        {},
        id="no-demand-no-entitlement",
    ),
    pytest.param(
        policy(("/a", dict(owned=4)), ("/b", {})),
        0,
        demands(a=BIG, b=BIG),
        {"/": 0.0, "/a": 0.0, "/b": 0.0},
        {},
        id="no-capacity-no-entitlement",
    ),
]


@pytest.mark.parametrize(("pol", "capacity", "leaf_demand", "expected", "reserved"), CASES)
def test_entitlement(
    pol: Policy,
    capacity: int,
    leaf_demand: dict[ConsumerPath, int],
    expected: dict[str, float],
    reserved: dict[str, float],
) -> None:
    division = divide(pol, capacity, leaf_demand)
    got = {p: division.entitlement[ConsumerPath(p)] for p in expected}
    assert got == pytest.approx(expected, abs=1e-9)
    assert {p: r for p, r in division.reserved.items() if r > 1e-9} == pytest.approx(
        reserved, abs=1e-9
    )


@pytest.mark.parametrize(
    ("pol", "leaf_demand", "expected"),
    [
        pytest.param(
            policy(("/a", {}), ("/b", {})),
            demands(a=3, b=4),
            {"/": 7, "/a": 3, "/b": 4},
            id="demand-sums-up-the-tree",
        ),
        pytest.param(
            policy(("/a", dict(limit=2)), ("/b", {})),
            demands(a=3, b=4),
            {"/": 6, "/a": 2, "/b": 4},
            id="leaf-demand-capped-by-its-limit",
        ),
        pytest.param(
            policy(
                ("/p", dict(limit=6)),
                ("/p/a", dict(limit=2)),
                ("/p/b", {}),
                ("/q", {}),
            ),
            demands(p__a=10, p__b=10, q=1),
            # /p/a: min(10, 2) = 2; /p: min(2 + 10, 6) = 6; root: 6 + 1.
            {"/": 7, "/p": 6, "/p/a": 2, "/p/b": 10, "/q": 1},
            id="demand-capped-by-limits-at-every-level",
        ),
        pytest.param(
            policy(("/p", {}), ("/p/a", {})),
            {},
            {"/": 0, "/p": 0, "/p/a": 0},
            id="leaves-without-jobs-have-demand-0",
        ),
    ],
)
def test_subtree_demand(
    pol: Policy, leaf_demand: dict[ConsumerPath, int], expected: dict[str, int]
) -> None:
    assert subtree_demand(pol, leaf_demand) == expected


def test_root_entitlement_is_capacity_capped_by_demand() -> None:
    pol = policy(("/a", {}), ("/b", {}))
    assert divide(pol, 16, demands(a=3, b=4)).entitlement[ROOT] == 7.0
    assert divide(pol, 5, demands(a=3, b=4)).entitlement[ROOT] == 5.0


def test_reserved_gpus_are_not_handed_to_others() -> None:
    # SEMANTICS step 1: reserved GPUs are subtracted before the surplus is shared.
    pol = policy(("/r", dict(owned=6, lend=False)), ("/a", {}), ("/b", {}))
    division = divide(pol, 10, demands(r=2, a=BIG, b=BIG))
    assert division.reserved == {"/r": 4.0}
    assert division.entitlement["/a"] + division.entitlement["/b"] == pytest.approx(4.0)
    assert division.total_reserved == 4.0
    total = sum(division.entitlement[ConsumerPath(p)] for p in ("/r", "/a", "/b"))
    assert total + division.total_reserved == pytest.approx(10.0)
