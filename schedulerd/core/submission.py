"""Refusal at submit time of jobs that can never run (SEMANTICS: the cycle, step 2:
"rejected at submit time with a clear error, not queued forever")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schedulerd.core.model import DEFAULT_POOL, ConsumerPath, ConsumerPolicy, Policy
from schedulerd.core.pools import pools_for

# The most GPUs a job may ask for, in any cluster (schedulerd.bounds.MAX_GPUS): the bound
# when the cluster's size is not known yet (no node has registered).
MAX_JOB_GPUS = 1_000_000


@dataclass(frozen=True)
class ClusterShape:
    """Every node the daemon knows, in any state: drained and unreachable nodes
    may come back, so they count toward what could ever fit."""

    node_gpus: Sequence[int]
    # Each node's (pool, GPU type), in node_gpus' order; empty: all in the default pool.
    node_pools: Sequence[tuple[str, str]] = ()

    @property
    def total(self) -> int:
        return sum(self.node_gpus)

    def pools(self) -> tuple[str, ...]:
        return tuple(sorted({p for p, _ in self._pools()}))

    def within(self, pool: str) -> ClusterShape:
        """The nodes of `pool`."""
        return ClusterShape(
            tuple(n for n, (p, _) in zip(self.node_gpus, self._pools(), strict=True) if p == pool)
        )

    def candidates(self, asked: str) -> tuple[str, ...]:
        """The pools a job asking for `asked` ("" any) may run in (core/pools.py)."""
        if not asked:
            return self.pools()
        return pools_for(asked, self._pools())

    def _pools(self) -> Sequence[tuple[str, str]]:
        return self.node_pools or [(DEFAULT_POOL, "")] * len(self.node_gpus)


def check_submission(
    policy: Policy,
    shape: ClusterShape,
    consumer: str,
    user: str,
    gpus_min: int,
    gpus_max: int,
    pool: str = "",
) -> str | None:
    """None when the job may be queued, else the reason it is refused. `pool`: the
    pool or GPU type it asked for, "" any; it must fit in at least one such pool."""
    path = ConsumerPath(consumer)
    if path not in policy.consumers:
        leaves = ", ".join(policy.leaves())
        return f"consumer {consumer!r} does not exist; submit to one of: {leaves}"
    if not policy.is_leaf(path):
        kids = ", ".join(policy.children(path))
        return f"consumer {consumer} is a parent; jobs go to its leaves: {kids}"
    if not policy.may_submit(path, user):
        allowed = policy.allowed_users(path)
        return f"user {user!r} may not submit to {consumer} (allowed: {', '.join(sorted(allowed))})"
    if gpus_min < 1:
        return "a job needs at least 1 GPU"
    if gpus_max < gpus_min:
        return f"GPU range {gpus_min}:{gpus_max} is empty (max below min)"
    if not shape.node_gpus:
        # No node yet: the pools are unknown. A job for any pool may fit the consumer's
        # own terms or those of a pool the policy names.
        names = (pool,) if pool else (DEFAULT_POOL, *policy.named_pools())
        first = None
        for name in names:
            error = _fits(policy.in_pool(name), shape, path, gpus_min, gpus_max)
            if error is None:
                return None
            first = first or error
        return first
    where = shape.candidates(pool)
    if not where:
        return (
            f"no node has pool or GPU type {pool!r} (a type names the pools made only of its "
            f"GPUs); the pools are: {', '.join(shape.pools())}"
        )
    refusals = []
    for p in where:
        error = _fits(policy.in_pool(p), shape.within(p), path, gpus_min, gpus_max)
        if error is None:
            return None
        refusals.append((p, error))
    if len(shape.pools()) == 1:
        return refusals[0][1]
    return "; ".join(f"in pool {p}: {error}" for p, error in refusals)


def _fits(
    policy: Policy, shape: ClusterShape, path: ConsumerPath, gpus_min: int, gpus_max: int
) -> str | None:
    """Whether a job could ever run in one pool (`shape` its nodes, `policy` its terms)."""
    for p in policy.ancestors(path):
        limit = _loosest_limit(policy.consumers[p])
        if limit is not None and gpus_min > limit:
            return f"can never fit: {p} has a limit of {limit} GPUs and the job needs {gpus_min}"
    never = _never_entitled(policy, path, gpus_min)
    if never is not None:
        return never
    if shape.node_gpus and gpus_min > shape.total:
        return (
            f"can never fit: the cluster has {shape.total} GPUs on {len(shape.node_gpus)} "
            f"node(s) and the job needs {gpus_min}"
        )
    # An elastic job whose max is above the whole cluster would be refused for less: its
    # max is a promise of GPUs to grow into, and the loop's work grows with it.
    if shape.node_gpus and gpus_max > shape.total:
        return (
            f"can never fit: elastic max {gpus_max} is above the cluster's {shape.total} GPUs "
            f"(on {len(shape.node_gpus)} node(s)); ask for at most {shape.total}"
        )
    if not shape.node_gpus and gpus_max > MAX_JOB_GPUS:  # no node yet: the absolute bound
        what = "elastic max" if gpus_max > gpus_min else "the job needs"
        return f"can never fit: {what} {gpus_max} is above any cluster's {MAX_JOB_GPUS:,} GPUs"
    return None


def _loosest_limit(spec: ConsumerPolicy) -> int | None:
    """The largest limit a consumer ever has: its own or a time window's (None: none),
    so that a job that fits only while a window holds is queued, not refused."""
    limits = [spec.limit] + [w.limit if w.limit_set else spec.limit for w in spec.windows]
    return None if any(x is None for x in limits) else max(x for x in limits if x is not None)


def _never_entitled(policy: Policy, path: ConsumerPath, gpus: int) -> str | None:
    """A consumer with share 0 that may not borrow is entitled to its owned GPUs at
    most (no surplus, no borrowing), and so is everything below it: a job larger
    than that waits forever."""
    for p in policy.ancestors(path):
        spec = policy.consumers[p]
        if p == "/" or spec.share != 0 or spec.borrow or gpus <= spec.owned:
            continue
        if any((w.share or 0) > 0 or (w.owned or 0) >= gpus for w in spec.windows):
            continue  # a time window gives it more: the job may run then
        if spec.owned == 0:
            return (
                f"can never run: {path} (or a parent) owns no GPUs, has share 0 and may not borrow"
            )
        return (
            f"can never run: {p} owns {spec.owned} GPUs, has share 0 and may not borrow; "
            f"the job needs {gpus}"
        )
    return None
