"""Entitlement by hierarchical water-filling (SEMANTICS: "Entitlement").

From the root down, a parent's entitlement E is divided among its children:
1. each child first gets g = min(owned, demand); owned GPUs that a `lend: false`
   child does not use stay reserved for it;
2. the rest goes to children with unmet demand in proportion to their share, each
   capped by min(demand, limit), re-handing what a capped child cannot take;
3. recurse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schedulerd.core.model import ROOT, ConsumerPath, Policy

_EPS = 1e-9


@dataclass(frozen=True)
class Division:
    """The result for every consumer of the tree."""

    demand: Mapping[ConsumerPath, int]
    entitlement: Mapping[ConsumerPath, float]
    reserved: Mapping[ConsumerPath, float]  # owned but unused, held back (lend: false)

    @property
    def total_reserved(self) -> float:
        return sum(self.reserved.values())


def subtree_demand(
    policy: Policy, leaf_demand: Mapping[ConsumerPath, int]
) -> dict[ConsumerPath, int]:
    """Demand of every consumer: its leaves' demand summed up the tree, each level
    capped by its limit (SEMANTICS: "demand")."""
    demand: dict[ConsumerPath, int] = {}
    # Children come after parents in policy order, so walk it backwards.
    for path in reversed(list(policy.consumers)):
        children = policy.children(path)
        raw = sum(demand[c] for c in children) if children else leaf_demand.get(path, 0)
        limit = policy.consumers[path].limit
        demand[path] = raw if limit is None else min(raw, limit)
    return demand


def divide(policy: Policy, capacity: int, leaf_demand: Mapping[ConsumerPath, int]) -> Division:
    demand = subtree_demand(policy, leaf_demand)
    entitlement: dict[ConsumerPath, float] = {ROOT: float(min(capacity, demand[ROOT]))}
    reserved: dict[ConsumerPath, float] = {}
    # The root may also hold reservations of its lend:false subtree, so divide
    # the whole capacity at the top, not only the root's demand.
    _divide_children(policy, ROOT, float(capacity), demand, entitlement, reserved, True)
    return Division(demand=demand, entitlement=entitlement, reserved=reserved)


def _divide_children(
    policy: Policy,
    parent: ConsumerPath,
    available: float,
    demand: Mapping[ConsumerPath, int],
    entitlement: dict[ConsumerPath, float],
    reserved: dict[ConsumerPath, float],
    record_reserved: bool,
) -> None:
    children = policy.children(parent)
    if not children:
        return
    specs = [policy.consumers[c] for c in children]

    # Step 1: owned GPUs first, capped by demand. When the owned GPUs promised
    # exceed what this level has (a smaller cluster than the policy assumed, or
    # nodes down), everyone's guarantee shrinks in proportion.
    guaranteed = {s.path: float(min(s.owned, demand[s.path])) for s in specs}
    held_back = {s.path: float(max(0, s.owned - demand[s.path])) for s in specs if not s.lend}
    promised = sum(guaranteed.values()) + sum(held_back.values())
    if promised > available + _EPS and promised > 0:
        scale = available / promised
        guaranteed = {p: g * scale for p, g in guaranteed.items()}
        # A lend:false child's use and reservation are one promise, its owned:
        # the shrunk owned covers its demand first and only the rest is reserved
        # (scaling both would leave its entitlement below what its children get).
        for p, r in held_back.items():
            whole = guaranteed[p] + r * scale
            guaranteed[p] = min(whole, float(demand[p]))
            held_back[p] = whole - guaranteed[p]
    if record_reserved:
        # Inside a reserving parent, a child's reservation is part of the
        # parent's; count it once.
        reserved.update({p: r for p, r in held_back.items() if r > _EPS})

    # Step 2: water-fill the rest by share, each child capped by its demand
    # (demand is already capped by limit, see subtree_demand).
    grant = dict(guaranteed)
    rest = available - sum(guaranteed.values()) - sum(held_back.values())
    open_ = [s for s in specs if s.share > 0 and demand[s.path] - grant[s.path] > _EPS]
    while rest > _EPS and open_:
        weight = sum(s.share for s in open_)
        capped = []
        handed = 0.0
        for s in open_:
            room = demand[s.path] - grant[s.path]
            offer = rest * s.share / weight
            take = min(offer, room)
            grant[s.path] += take
            handed += take
            if room - take <= _EPS:
                capped.append(s)
        rest -= handed
        if not capped:
            break  # everyone took their full offer: rest is spent
        open_ = [s for s in open_ if s not in capped]

    for s in specs:
        entitlement[s.path] = grant[s.path]
        # Step 3: recurse. A lend:false child's reservation is its own to divide.
        _divide_children(
            policy,
            s.path,
            grant[s.path] + held_back.get(s.path, 0.0),
            demand,
            entitlement,
            reserved,
            # Inside a parent that reserves GPUs, its children's reservations are
            # part of the parent's: count them once. A lend:false parent that uses
            # all it owns reserves nothing, so its children's still count.
            record_reserved and held_back.get(s.path, 0.0) <= _EPS,
        )
