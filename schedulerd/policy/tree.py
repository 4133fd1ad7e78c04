"""The second pass: checks that span several consumers, inheritance, the core `Policy`.

The first pass (loader.py) reads each consumer's own lines into a `Draft`; only here, with
the whole tree known, can a parent's owned be compared with its children's, and inherited
values be filled in.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypeVar

from yaml.nodes import Node

from schedulerd.core import windows as timewindows
from schedulerd.core.model import (
    ROOT,
    ConsumerPath,
    ConsumerPolicy,
    Order,
    Policy,
    PoolTerms,
    Window,
    is_within,
)
from schedulerd.policy.errors import Issues

T = TypeVar("T")


@dataclass
class Inherited:
    """The values a consumer takes when it does not set them (brief: inheritance)."""

    grace_s: float = ConsumerPolicy.grace_s
    min_runtime_s: float = ConsumerPolicy.min_runtime_s
    reclaim_patience_s: float = ConsumerPolicy.reclaim_patience_s
    max_preemptions: int = ConsumerPolicy.max_preemptions
    order: Order = ConsumerPolicy.order
    run_as_root: bool = False  # the policy's top-level `run_as_root`, else false


@dataclass
class PoolDraft:
    """A consumer's `pools.NAME` entry: what it sets in that pool, the rest unset."""

    owned: int | None = None
    owned_node: Node | None = None
    share: float | None = None
    limit: int | None = None
    limit_node: Node | None = None
    limit_set: bool = False  # `limit: null` (no limit there) differs from no `limit`
    name_node: Node | None = None  # the pool's name, where problems point


# The most distinct pools one policy may name: every consumer has terms in each, and each
# is a cycle of its own.
MAX_POLICY_POOLS = 64


@dataclass
class WindowDraft:
    """One entry of a consumer's `windows:`, with the nodes its problems point at."""

    node: Node
    key: str
    when: str = ""
    days: int = 0
    start: int = 0
    end: int = 0
    owned: int | None = None
    owned_node: Node | None = None
    share: float | None = None
    limit: int | None = None
    limit_node: Node | None = None
    limit_set: bool = False

    def window(self) -> Window:
        return Window(
            when=self.when,
            days=self.days,
            start=self.start,
            end=self.end,
            owned=self.owned,
            share=self.share,
            limit=self.limit,
            limit_set=self.limit_set,
        )


@dataclass
class Draft:
    """A consumer as its own lines say, before owned sums and inheritance."""

    path: ConsumerPath
    owned: int | None = None  # None: not set (a parent then owns the sum of its children's)
    owned_node: Node | None = None
    share: float = ConsumerPolicy.share
    limit: int | None = None
    limit_node: Node | None = None
    lend: bool = ConsumerPolicy.lend
    borrow: bool = ConsumerPolicy.borrow
    priority_preemption: bool = ConsumerPolicy.priority_preemption
    grace_s: float | None = None
    min_runtime_s: float | None = None
    reclaim_patience_s: float | None = None
    max_preemptions: int | None = None
    order: Order | None = None
    users: frozenset[str] | None = None
    admins: frozenset[str] = frozenset()
    run_as_root: bool | None = None
    pools: dict[str, PoolDraft] = field(default_factory=dict)
    windows: list[WindowDraft] = field(default_factory=list)
    children: list[Draft] = field(default_factory=list)


def resolve(
    root: ConsumerPolicy,
    tops: list[Draft],
    defaults: Inherited,
    issues: Issues,
    timezone: str = "UTC",
) -> Policy:
    """Check owned sums and limits (in every pool the policy names, and in every state
    of the time windows), apply inheritance, and list the tree top-down."""
    owned: dict[ConsumerPath, int] = {}
    for d in tops:
        _owned(d, owned, issues, None)
    named = _named_pools(tops, issues)
    terms: dict[str, dict[ConsumerPath, PoolTerms]] = {}
    for pool in named:
        pool_owned: dict[ConsumerPath, int] = {}
        for d in tops:
            _owned(d, pool_owned, issues, pool)
        terms[pool] = {}
        for d in tops:
            _terms(d, pool, pool_owned, terms[pool])
    root_terms = PoolTerms(owned=root.owned, share=root.share, limit=root.limit)
    out: dict[ConsumerPath, ConsumerPolicy] = {
        ROOT: replace(root, pools=tuple((pool, root_terms) for pool in named))
    }
    for d in tops:
        _emit(d, defaults, owned, terms, out)
    policy = Policy(consumers=out, timezone=timezone)
    if policy.windowed:
        drafts: dict[ConsumerPath, Draft] = {}
        for d in tops:
            _index(d, drafts)
        _check_windows(policy, drafts, issues)
    return policy


def _index(d: Draft, out: dict[ConsumerPath, Draft]) -> None:
    out[d.path] = d
    for c in d.children:
        _index(c, out)


def _check_windows(policy: Policy, drafts: dict[ConsumerPath, Draft], issues: Issues) -> None:
    """The checks that span consumers (a parent's owned at least its children's sum, a
    limit at least the owned), in every window state the policy can produce: the state
    depends on the local time of the week only, and changes only at the windows' edges
    (core/windows.py), so evaluating the tree at each edge sees every state. Each problem
    is reported once, at the first state (from Monday 00:00) that shows it; one the
    policy has outside every window was reported already.

    Only what a state changes is evaluated: the consumers in a window and their
    ancestors, each parent's children's sum as the sum outside windows plus the changes
    (a policy of 10,000 consumers and 256 windows is checked in well under a second)."""
    base = policy.consumers
    kids_sum = {
        p: sum(base[c].owned for c in policy.children(p)) for p in base if policy.children(p)
    }
    reported: set[tuple[ConsumerPath, str]] = set()
    for path, spec in base.items():
        if spec.limit is not None and spec.limit < spec.owned:
            reported.add((path, "limit"))
        if path in kids_sum and spec.owned < kids_sum[path]:
            reported.add((path, "owned"))
    depth = {p: len(policy.ancestors(p)) for p in base}
    seen: set[tuple[int, ...]] = {tuple(-1 for _ in policy.windowed)}
    for point in timewindows.local_points(policy):
        state = timewindows.state_at_local(policy, *divmod(point, timewindows.DAY_S))
        if state in seen:
            continue
        seen.add(state)
        in_force = {
            p: drafts[p].windows[i] for p, i in zip(policy.windowed, state, strict=True) if i >= 0
        }
        touched: set[ConsumerPath] = set()
        for p in in_force:
            touched.update(policy.ancestors(p))
        touched.discard(ROOT)
        # Bottom-up: a parent that owns its children's sum sees their owned in force.
        owned: dict[ConsumerPath, int] = {}
        below: dict[ConsumerPath, int] = {}
        for p in sorted(touched, key=lambda q: -depth[q]):
            changed = sum(owned[c] - base[c].owned for c in policy.children(p) if c in owned)
            below[p] = kids_sum.get(p, 0) + changed
            w = in_force.get(p)
            if w is not None and w.owned is not None:
                owned[p] = w.owned
            elif base[p].owned_sum:
                owned[p] = below[p]
            else:
                owned[p] = base[p].owned
        for p in sorted(touched):
            _check_state(p, owned[p], below[p], in_force, drafts, policy, reported, issues)


def _check_state(
    path: ConsumerPath,
    owned: int,
    below: int,
    in_force: dict[ConsumerPath, WindowDraft],
    drafts: dict[ConsumerPath, Draft],
    policy: Policy,
    reported: set[tuple[ConsumerPath, str]],
    issues: Issues,
) -> None:
    d = drafts[path]
    mine = in_force.get(path)
    key = _key_of(path)
    limit = d.limit
    if mine is not None and mine.limit_set:
        limit = mine.limit

    def holding() -> str:
        """The windows that make this state: those of the consumer and its subtree."""
        named = [f"{p} {w.when!r}" for p, w in sorted(in_force.items()) if is_within(p, path)]
        many = len(named) > 1
        return f"while the window{'s' if many else ''} {', '.join(named)} hold{'' if many else 's'}"

    node: Node | None
    if limit is not None and limit < owned and (path, "limit") not in reported:
        reported.add((path, "limit"))
        if mine is not None and mine.limit_set and mine.limit_node is not None:
            node, where = mine.limit_node, f"{mine.key}.limit"
        else:
            node, where = d.limit_node, f"{key}.limit"
        message = (
            f"limit {limit} is below owned {owned} {holding()}; it could never hold what it owns"
        )
        issues.add(node if node is not None else 1, where, message)
    explicit = (mine is not None and mine.owned is not None) or d.owned is not None
    if policy.children(path) and explicit and owned < below and (path, "owned") not in reported:
        reported.add((path, "owned"))
        if mine is not None and mine.owned is not None:
            node, where = mine.owned_node, f"{mine.key}.owned"
        else:
            node, where = d.owned_node, f"{key}.owned"
        message = (
            f"owned {owned} is below the sum of its children's owned GPUs ({below}) "
            f"{holding()}; raise it or leave it out"
        )
        issues.add(node if node is not None else 1, where, message)


def _named_pools(tops: list[Draft], issues: Issues) -> list[str]:
    """Every pool the policy names, sorted; none (and an error) when there are too many,
    or when the policy also has time windows (not combined yet: docs/policy.md)."""
    first: dict[str, Node | None] = {}
    windows: list[WindowDraft] = []
    stack = list(reversed(tops))
    while stack:
        d = stack.pop()
        for name, entry in d.pools.items():
            first.setdefault(name, entry.name_node)
        windows += d.windows
        stack += reversed(d.children)
    if len(first) > MAX_POLICY_POOLS:
        beyond = list(first.values())[MAX_POLICY_POOLS]
        if beyond is not None:
            issues.add(beyond, "pools", f"more than {MAX_POLICY_POOLS} pools in one policy")
        return []
    if first and windows:
        w = windows[0]
        message = (
            "time windows cannot be combined with per-pool terms (`pools:`) in one policy "
            "yet; use one or the other (docs/policy.md)"
        )
        issues.add(w.node, w.key, message)
        return []
    return sorted(first)


def _owned(d: Draft, owned: dict[ConsumerPath, int], issues: Issues, pool: str | None) -> int:
    """A consumer's owned GPUs (in `pool`, or where no pool says otherwise): its own
    value, else the sum of its children's (bottom-up)."""
    below = sum(_owned(c, owned, issues, pool) for c in d.children)
    entry = d.pools.get(pool) if pool is not None else None
    set_here = entry is not None and entry.owned is not None
    value = entry.owned if entry is not None and entry.owned is not None else d.owned
    node = entry.owned_node if entry is not None and set_here else d.owned_node
    limit, limit_node = d.limit, d.limit_node
    if entry is not None and entry.limit_set:
        limit, limit_node = entry.limit, entry.limit_node
    mine = below if value is None else value
    key = _key_of(d.path)
    where = f" in pool {pool}" if pool is not None else ""
    owned_key = f"{key}.pools.{pool}.owned" if set_here else f"{key}.owned"
    if value is not None and d.children and value < below and node is not None:
        message = (
            f"owned {value} is below the sum of its children's owned GPUs{where} ({below}); "
            "raise it or leave it out"
        )
        issues.add(node, owned_key, message)
    if limit is not None and limit < mine and limit_node is not None:
        how = "" if value is not None else " (the sum of its children's)"
        limit_key = (
            f"{key}.pools.{pool}.limit" if limit_node is not d.limit_node else f"{key}.limit"
        )
        message = (
            f"limit {limit} is below owned {mine}{how}{where}; it could never hold what it owns"
        )
        issues.add(limit_node, limit_key, message)
    owned[d.path] = mine
    return mine


def _terms(
    d: Draft, pool: str, owned: dict[ConsumerPath, int], out: dict[ConsumerPath, PoolTerms]
) -> None:
    entry = d.pools.get(pool, PoolDraft())
    out[d.path] = PoolTerms(
        owned=owned[d.path],
        share=or_(entry.share, d.share),
        limit=entry.limit if entry.limit_set else d.limit,
    )
    for c in d.children:
        _terms(c, pool, owned, out)


def _emit(
    d: Draft,
    up: Inherited,
    owned: dict[ConsumerPath, int],
    terms: dict[str, dict[ConsumerPath, PoolTerms]],
    out: dict[ConsumerPath, ConsumerPolicy],
) -> None:
    # Own value, else the nearest ancestor's, else `defaults`, else the model's default:
    # passing the effective values down gives exactly that order.
    here = Inherited(
        grace_s=or_(d.grace_s, up.grace_s),
        min_runtime_s=or_(d.min_runtime_s, up.min_runtime_s),
        reclaim_patience_s=or_(d.reclaim_patience_s, up.reclaim_patience_s),
        max_preemptions=or_(d.max_preemptions, up.max_preemptions),
        order=or_(d.order, up.order),
        run_as_root=or_(d.run_as_root, up.run_as_root),
    )
    out[d.path] = ConsumerPolicy(
        path=d.path,
        owned=owned[d.path],
        share=d.share,
        limit=d.limit,
        lend=d.lend,
        borrow=d.borrow,
        priority_preemption=d.priority_preemption,
        grace_s=here.grace_s,
        min_runtime_s=here.min_runtime_s,
        reclaim_patience_s=here.reclaim_patience_s,
        max_preemptions=here.max_preemptions,
        order=here.order,
        users=d.users,
        admins=d.admins,
        run_as_root=here.run_as_root,
        pools=tuple((pool, by_path[d.path]) for pool, by_path in sorted(terms.items())),
        windows=tuple(w.window() for w in d.windows),
        owned_sum=d.owned is None and bool(d.children),
    )
    for c in d.children:
        _emit(c, here, owned, terms, out)


def _key_of(path: ConsumerPath) -> str:
    """The dotted key of a consumer: /research/vision → consumers.research.consumers.vision."""
    return ".".join(f"consumers.{part}" for part in path.strip("/").split("/"))


def or_(x: T | None, fallback: T) -> T:
    return fallback if x is None else x
