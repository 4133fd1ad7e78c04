"""Entitlement by hierarchical water-filling (SEMANTICS: "Entitlement").

From the root down, a parent's entitlement E is divided among its children:
1. each child first gets g = min(owned, demand); owned GPUs that a `lend: false`
   child does not use stay reserved for it (also inside a parent that lends);
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


def locked_owned(policy: Policy, demand: Mapping[ConsumerPath, int]) -> dict[ConsumerPath, float]:
    """Owned GPUs each subtree leaves unused and will not lend (SEMANTICS: step 1).

    A `lend: false` consumer keeps what it owns but does not use; a consumer that
    lends still keeps its `lend: false` descendants' reservations, which nobody
    outside them may use: max(locked inside, owned - demand) and locked inside.
    Computed bottom-up, so that a parent hands out only what is really lendable
    (otherwise a reservation under a lending parent that wants nothing is lost)."""
    locked: dict[ConsumerPath, float] = {}
    for path in reversed(list(policy.consumers)):
        spec = policy.consumers[path]
        inner = sum(locked[c] for c in policy.children(path))
        locked[path] = inner if spec.lend else max(inner, float(spec.owned - demand[path]))
    return locked


def consumer_usage(
    policy: Policy, leaf_usage: Mapping[ConsumerPath, float]
) -> dict[ConsumerPath, float]:
    """Decayed GPU-seconds of every consumer: its leaves' summed up the tree."""
    usage: dict[ConsumerPath, float] = {}
    for path in reversed(list(policy.consumers)):
        children = policy.children(path)
        usage[path] = sum(usage[c] for c in children) if children else leaf_usage.get(path, 0.0)
    return usage


def divide(
    policy: Policy,
    capacity: int,
    leaf_demand: Mapping[ConsumerPath, int],
    leaf_usage: Mapping[ConsumerPath, float] | None = None,
) -> Division:
    """`leaf_usage`: decayed GPU-seconds per leaf; with the policy's `usage_weight` on, it
    lowers shares of the surplus (step 2), never owned GPUs."""
    weights = None
    if policy.usage_weight > 0 and leaf_usage:
        weights = _usage_shares(policy, consumer_usage(policy, leaf_usage))
    demand = subtree_demand(policy, leaf_demand)
    locked = locked_owned(policy, demand)
    entitlement: dict[ConsumerPath, float] = {ROOT: float(min(capacity, demand[ROOT]))}
    reserved: dict[ConsumerPath, float] = {}
    # The root also holds the reservations of its lend:false subtrees, so divide
    # the whole capacity at the top, not only the root's demand.
    _divide_children(
        policy, ROOT, float(capacity), 0.0, demand, locked, entitlement, reserved, weights
    )
    return Division(demand=demand, entitlement=entitlement, reserved=reserved)


def _divide_children(
    policy: Policy,
    parent: ConsumerPath,
    grant: float,
    held: float,
    demand: Mapping[ConsumerPath, int],
    locked: Mapping[ConsumerPath, float],
    entitlement: dict[ConsumerPath, float],
    reserved: dict[ConsumerPath, float],
    weights: Mapping[ConsumerPath, float] | None = None,
) -> None:
    """Divide a parent's entitlement `grant` among its children; `held` is what the
    parent's subtree keeps reserved. Children's reservations come out of `held`
    (so each reserved GPU is recorded once, by the consumer that keeps it), and
    what they are entitled to comes out of `grant`."""
    children = policy.children(parent)
    if not children:
        if held > _EPS:
            reserved[parent] = held
        return
    specs = [policy.consumers[c] for c in children]

    # Step 1: owned GPUs first, capped by demand; a child's locked GPUs are held
    # back for it. When what is promised exceeds what this level has (a smaller
    # cluster than the policy assumed, or nodes down), every child's owned shrinks
    # in proportion, and the shrunk owned covers the child's use before its
    # reservation.
    guaranteed = {
        s.path: max(0.0, min(s.owned - locked[s.path], float(demand[s.path]))) for s in specs
    }
    lock = {s.path: locked[s.path] for s in specs}
    available = grant + held
    promised = sum(guaranteed.values()) + sum(lock.values())
    if promised > available + _EPS and promised > 0:
        scale = available / promised
        for p, g in guaranteed.items():
            whole = (g + lock[p]) * scale
            guaranteed[p] = min(whole, g)
            lock[p] = whole - guaranteed[p]
    # What the parent's subtree holds back beyond its children's reservations is
    # the parent's own (a lend:false parent's unused owned).
    own = max(0.0, held - sum(lock.values()))
    if own > _EPS and parent != ROOT:
        reserved[parent] = own

    # Step 2: water-fill the rest by share, each child capped by its demand
    # (demand is already capped by limit, see subtree_demand).
    share = dict(guaranteed)
    rest = available - sum(guaranteed.values()) - sum(lock.values()) - own
    weight_of = {s.path: s.share if weights is None else weights[s.path] for s in specs}
    open_ = [s for s in specs if s.share > 0 and demand[s.path] - share[s.path] > _EPS]
    while rest > _EPS and open_:
        weight = sum(weight_of[s.path] for s in open_)
        capped = []
        handed = 0.0
        for s in open_:
            room = demand[s.path] - share[s.path]
            offer = rest * weight_of[s.path] / weight
            take = min(offer, room)
            share[s.path] += take
            handed += take
            if room - take <= _EPS:
                capped.append(s)
        rest -= handed
        if not capped:
            break  # everyone took their full offer: rest is spent
        open_ = [s for s in open_ if s not in capped]

    for s in specs:
        entitlement[s.path] = share[s.path]
        # Step 3: recurse with the child's entitlement and its reservations.
        _divide_children(
            policy,
            s.path,
            share[s.path],
            lock[s.path],
            demand,
            locked,
            entitlement,
            reserved,
            weights,
        )


def _usage_shares(policy: Policy, usage: Mapping[ConsumerPath, float]) -> dict[ConsumerPath, float]:
    """Each consumer's effective share (SEMANTICS: usage decay): share / (1 + k·u), u its
    fraction of its siblings' (its own included) decayed usage, k the policy's
    usage_weight. Slurm normalizes usage among siblings the same way."""
    out: dict[ConsumerPath, float] = {}
    for parent in policy.consumers:
        children = policy.children(parent)
        total = sum(usage[c] for c in children)
        for c in children:
            fraction = usage[c] / total if total > _EPS else 0.0
            out[c] = policy.consumers[c].share / (1 + policy.usage_weight * fraction)
    return out
