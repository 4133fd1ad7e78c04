"""The second pass: checks that span several consumers, inheritance, the core `Policy`.

The first pass (loader.py) reads each consumer's own lines into a `Draft`; only here, with
the whole tree known, can a parent's owned be compared with its children's, and inherited
values be filled in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from yaml.nodes import Node

from schedulerd.core.model import ROOT, ConsumerPath, ConsumerPolicy, Order, Policy
from schedulerd.policy.errors import Issues

T = TypeVar("T")


@dataclass
class Inherited:
    """The values a consumer takes when it does not set them (brief: inheritance)."""

    grace_s: float = ConsumerPolicy.grace_s
    min_runtime_s: float = ConsumerPolicy.min_runtime_s
    max_preemptions: int = ConsumerPolicy.max_preemptions
    order: Order = ConsumerPolicy.order
    run_as_root: bool = False  # the policy's top-level `run_as_root`, else false


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
    max_preemptions: int | None = None
    order: Order | None = None
    users: frozenset[str] | None = None
    admins: frozenset[str] = frozenset()
    run_as_root: bool | None = None
    children: list[Draft] = field(default_factory=list)


def resolve(root: ConsumerPolicy, tops: list[Draft], defaults: Inherited, issues: Issues) -> Policy:
    """Check owned sums and limits, apply inheritance, and list the tree top-down."""
    owned: dict[ConsumerPath, int] = {}
    for d in tops:
        _owned(d, owned, issues)
    out: dict[ConsumerPath, ConsumerPolicy] = {ROOT: root}
    for d in tops:
        _emit(d, defaults, owned, out)
    return Policy(consumers=out)


def _owned(d: Draft, owned: dict[ConsumerPath, int], issues: Issues) -> int:
    """A consumer's owned GPUs: its own value, else the sum of its children's (bottom-up)."""
    below = sum(_owned(c, owned, issues) for c in d.children)
    mine = below if d.owned is None else d.owned
    key = _key_of(d.path)
    if d.owned is not None and d.children and d.owned < below and d.owned_node is not None:
        message = (
            f"owned {d.owned} is below the sum of its children's owned GPUs ({below}); "
            "raise it or leave it out"
        )
        issues.add(d.owned_node, f"{key}.owned", message)
    if d.limit is not None and d.limit < mine and d.limit_node is not None:
        how = "" if d.owned is not None else " (the sum of its children's)"
        message = f"limit {d.limit} is below owned {mine}{how}; it could never hold what it owns"
        issues.add(d.limit_node, f"{key}.limit", message)
    owned[d.path] = mine
    return mine


def _emit(
    d: Draft,
    up: Inherited,
    owned: dict[ConsumerPath, int],
    out: dict[ConsumerPath, ConsumerPolicy],
) -> None:
    # Own value, else the nearest ancestor's, else `defaults`, else the model's default:
    # passing the effective values down gives exactly that order.
    here = Inherited(
        grace_s=or_(d.grace_s, up.grace_s),
        min_runtime_s=or_(d.min_runtime_s, up.min_runtime_s),
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
        max_preemptions=here.max_preemptions,
        order=here.order,
        users=d.users,
        admins=d.admins,
        run_as_root=here.run_as_root,
    )
    for c in d.children:
        _emit(c, here, owned, out)


def _key_of(path: ConsumerPath) -> str:
    """The dotted key of a consumer: /research/vision → consumers.research.consumers.vision."""
    return ".".join(f"consumers.{part}" for part in path.strip("/").split("/"))


def or_(x: T | None, fallback: T) -> T:
    return fallback if x is None else x
