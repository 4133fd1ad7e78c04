"""The core's vocabulary: frozen values in, a plan out (docs/design/architecture.md).

Nothing here imports grpc, sqlite or protobuf, and nothing reads the clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import NewType

JobId = NewType("JobId", int)
NodeName = NewType("NodeName", str)
ConsumerPath = NewType("ConsumerPath", str)

ROOT = ConsumerPath("/")
# The pool of a node whose agent names none and whose GPUs have no known type (fake
# GPUs, a node without GPUs): one pool, as every cluster had before pools.
DEFAULT_POOL = "default"


class Order(enum.Enum):
    """How a leaf consumer orders its own waiting jobs (SEMANTICS: the cycle, step 2)."""

    PRIORITY = "priority"  # higher priority first, then submit order
    FIFO = "fifo"  # submit order only
    FAIRSHARE = "fairshare"  # the user with the least (decayed) usage first


@dataclass(frozen=True)
class PoolTerms:
    """A consumer's owned, share and limit in one pool (SEMANTICS: entitlements are
    computed per pool). The policy's `pools:` key; unset values come from the
    consumer's own, and a parent's unset owned is the sum of its children's there."""

    owned: int
    share: float
    limit: int | None


@dataclass(frozen=True)
class Window:
    """A time window of a consumer's plan (the policy's `windows:`; core/windows.py): while
    the local clock of the policy's time zone reads within it, its owned, share and limit
    replace the consumer's own (None: unchanged). `days` is a bit mask of the weekdays
    on which it starts (bit 0 Monday ... bit 6 Sunday); `start` and `end` are seconds
    from local midnight, `end` up to 86400 (24:00); `end < start` crosses midnight into
    the next day."""

    when: str  # as the policy writes it ("Mon-Fri 09:00-18:00")
    days: int
    start: int
    end: int
    owned: int | None = None
    share: float | None = None
    limit: int | None = None
    limit_set: bool = False  # `limit: null` in a window: no limit while it holds


@dataclass(frozen=True)
class ConsumerPolicy:
    """One node of the consumer tree, as the policy file sets it. `owned`, `share` and
    `limit` hold in every pool that `pools` does not name."""

    path: ConsumerPath
    owned: int = 0
    share: float = 1.0
    limit: int | None = None  # None: no limit
    lend: bool = True
    borrow: bool = True
    grace_s: float = 30.0
    min_runtime_s: float = 0.0
    # A job of this consumer preempted this many times is not preempted again for
    # borrowing (reclaim); priority preemption inside the consumer still may
    # (docs/scheduling.md, bounded disruption).
    max_preemptions: int = 3
    # How long a job of this consumer waits before reclaim preempts or shrinks others for
    # it (0: at once, SEMANTICS' guarantee). Most GPUs it is owed free up by themselves
    # within minutes on a busy cluster (docs/simulator.md, the preemption study): a
    # patience trades that much of the guarantee for fewer preemptions.
    reclaim_patience_s: float = 0.0
    order: Order = Order.PRIORITY
    # A waiting job may preempt lower-priority jobs of this same consumer (SEMANTICS:
    # the cycle, step 5).
    priority_preemption: bool = False
    # Users allowed to submit here; None inherits the parent's list. "*" is everyone.
    users: frozenset[str] | None = None
    # This consumer's own admins (the policy's `admins:`): they may see, cancel and read
    # the logs of every job of its subtree. Policy.admins_of adds the ancestors' admins.
    admins: frozenset[str] = frozenset()
    # Whether jobs that root submits here may run as uid 0 on the nodes; None inherits
    # the parent's value (the policy loader fills it in: the root's default is false).
    run_as_root: bool | None = None
    # Per pool, as (pool, terms) sorted by pool: every pool the policy names anywhere
    # has an entry on every consumer (policy/tree.py resolves them).
    pools: tuple[tuple[str, PoolTerms], ...] = ()
    # Time windows (core/windows.py): the first that holds at an instant sets owned,
    # share and limit then. Empty in a policy that windows.policy_at resolved.
    windows: tuple[Window, ...] = ()
    # Its owned is the sum of its children's (the policy leaves it out): recomputed
    # when a window changes a child's owned. Not compared: it says how owned came about.
    owned_sum: bool = field(default=False, compare=False)
    # In a policy resolved at an instant (windows.policy_at): the `when` of the window
    # in force then, "" when none.
    window: str = ""

    def in_pool(self, pool: str) -> ConsumerPolicy:
        for name, terms in self.pools:
            if name == pool:
                return replace(
                    self, owned=terms.owned, share=terms.share, limit=terms.limit, pools=()
                )
        return self


@dataclass(frozen=True)
class Policy:
    """The whole consumer tree. `consumers` holds every node, the root "/" included,
    parents before children (so iteration order is a valid top-down walk)."""

    consumers: Mapping[ConsumerPath, ConsumerPolicy]
    # How long past GPU-seconds count, halving (core/usage.py): the `fairshare` order
    # puts the user with the least decayed usage first. The policy's `usage_half_life`.
    usage_half_life_s: float = 3600.0
    # How much decayed usage lowers a consumer's share of the surplus (SEMANTICS: usage
    # decay): effective share = share / (1 + usage_weight · its fraction of its
    # siblings' usage). 0, the default: off. The policy's `usage_weight`.
    usage_weight: float = 0.0
    # The time zone that consumers' windows are read in (the policy's `timezone`).
    timezone: str = "UTC"
    # Indexes built once: the core asks for children and ancestors in its hot loops.
    _children: Mapping[ConsumerPath, tuple[ConsumerPath, ...]] = field(
        init=False, repr=False, compare=False
    )
    _chains: Mapping[ConsumerPath, tuple[ConsumerPath, ...]] = field(
        init=False, repr=False, compare=False
    )
    _in_pool: dict[str, Policy] = field(init=False, repr=False, compare=False)
    # Consumers with windows, top-down, and the policies resolved per window state
    # (core/windows.py).
    windowed: tuple[ConsumerPath, ...] = field(init=False, repr=False, compare=False)
    _at: dict[tuple[int, ...], Policy] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        children: dict[ConsumerPath, list[ConsumerPath]] = {}
        for p in self.consumers:
            if p != ROOT:
                children.setdefault(parent_of(p), []).append(p)
        object.__setattr__(self, "_children", {k: tuple(sorted(v)) for k, v in children.items()})
        object.__setattr__(self, "_chains", {p: _chain(p) for p in self.consumers})
        object.__setattr__(self, "_in_pool", {})
        object.__setattr__(
            self, "windowed", tuple(p for p, c in self.consumers.items() if c.windows)
        )
        object.__setattr__(self, "_at", {})

    def named_pools(self) -> tuple[str, ...]:
        """The pools this policy gives their own terms (its `pools:` keys), sorted."""
        root = self.consumers.get(ROOT)
        return tuple(name for name, _ in root.pools) if root is not None else ()

    def in_pool(self, pool: str) -> Policy:
        """The tree as it holds in `pool`: each consumer's owned, share and limit there.
        A pool the policy does not name gets the consumers' own values: this policy."""
        if pool not in self.named_pools():
            return self
        cached = self._in_pool.get(pool)
        if cached is None:
            consumers = {p: c.in_pool(pool) for p, c in self.consumers.items()}
            cached = Policy(
                consumers=consumers,
                usage_half_life_s=self.usage_half_life_s,
                usage_weight=self.usage_weight,
                timezone=self.timezone,
            )
            self._in_pool[pool] = cached
        return cached

    def children(self, path: ConsumerPath) -> tuple[ConsumerPath, ...]:
        return self._children.get(path, ())

    def is_leaf(self, path: ConsumerPath) -> bool:
        return path in self.consumers and path not in self._children

    def leaves(self) -> tuple[ConsumerPath, ...]:
        return tuple(p for p in self.consumers if self.is_leaf(p))

    def ancestors(self, path: ConsumerPath) -> tuple[ConsumerPath, ...]:
        """The path itself and every ancestor up to the root, nearest first."""
        chain = self._chains.get(path)
        return chain if chain is not None else _chain(path)

    def allowed_users(self, path: ConsumerPath) -> frozenset[str]:
        for p in self.ancestors(path):
            users = self.consumers[p].users
            if users is not None:
                return users
        return frozenset({"*"})

    def may_submit(self, path: ConsumerPath, user: str) -> bool:
        """SEMANTICS: only users the policy allows submit to a consumer."""
        allowed = self.allowed_users(path)
        return "*" in allowed or user in allowed

    def admins_of(self, path: ConsumerPath) -> frozenset[str]:
        """Who administers `path`: the admins of it and of every ancestor, the root's
        (the whole tree's admins) included."""
        admins: set[str] = set()
        if not path.startswith("/"):  # not a path: ancestors() would never reach the root
            return frozenset()
        for p in self.ancestors(path):
            spec = self.consumers.get(p)
            if spec is not None:
                admins |= spec.admins
        return frozenset(admins)

    def runs_as_root(self, path: ConsumerPath) -> bool:
        """Whether a job that root submits to `path` may run as uid 0: the nearest value
        set on it or an ancestor, else false."""
        if not path.startswith("/"):
            return False
        for p in self.ancestors(path):
            spec = self.consumers.get(p)
            if spec is not None and spec.run_as_root is not None:
                return spec.run_as_root
        return False


def _chain(path: ConsumerPath) -> tuple[ConsumerPath, ...]:
    chain = [path]
    while chain[-1] != ROOT:
        chain.append(parent_of(chain[-1]))
    return tuple(chain)


def parent_of(path: ConsumerPath) -> ConsumerPath:
    if path == ROOT:
        raise ValueError("the root has no parent")
    head = path.rsplit("/", 1)[0]
    return ConsumerPath(head or "/")


def is_within(path: str, subtree: str) -> bool:
    """True when `path` is `subtree` or lies under it."""
    if subtree in ("", "/"):
        return True
    return path == subtree or path.startswith(subtree.rstrip("/") + "/")


@dataclass(frozen=True, order=True)
class GpuSlot:
    node: NodeName
    index: int


@dataclass(frozen=True)
class Node:
    """A GPU node as the core sees it. `schedulable` is false when the node is
    drained or its agent is not connected: nothing new lands there, but jobs that
    already hold its GPUs keep them."""

    name: NodeName
    gpus: tuple[int, ...]
    schedulable: bool = True
    # Its pool (the agent's `pool`, else its GPU type) and its GPUs' type as a short
    # name ("h100"): a job that asks for either may land here (core/pools.py).
    pool: str = DEFAULT_POOL
    gpu_type: str = ""


class JobPhase(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"


@dataclass(frozen=True)
class Job:
    """A job that is waiting or running; ended jobs never reach the core."""

    id: JobId
    consumer: ConsumerPath
    user: str
    gpus_min: int
    gpus_max: int
    priority: int
    submit_seq: int  # queue order: the job's place, kept across restarts
    phase: JobPhase
    held: tuple[GpuSlot, ...] = ()
    started_at: float | None = None
    # An elastic job's first worker hosts its rendezvous: a shrink never takes it.
    anchor: GpuSlot | None = None
    # Reclaim already under way: GPUs a shrink is giving back, or the whole job
    # being stopped (preemption or cancel), and when its grace ends.
    releasing: tuple[GpuSlot, ...] = ()
    stopping: bool = False
    release_deadline: float | None = None
    # Times it was preempted (SEMANTICS: reclaim): a job preempted before is taken after
    # those that were not, and not at all for borrowing past its consumer's
    # max_preemptions (docs/scheduling.md, bounded disruption).
    preemptions: int = 0
    # The most it runs, as its user declared (`--time`): it may backfill into GPUs held
    # for a reservation when it ends before the reserved job could start (reservation.py).
    time_limit_s: float | None = None
    # The pool or GPU type it asked for (`--pool`); None: any pool (core/pools.py).
    pool: str | None = None
    # Since when it waits (submitted, or back in the queue): reclaim acts for it once its
    # consumer's reclaim_patience has passed. None: since ever.
    waiting_since: float | None = None

    @property
    def gpus(self) -> int:
        """GPUs this job needs to start (its gang)."""
        return self.gpus_min

    @property
    def elastic(self) -> bool:
        return self.gpus_max > self.gpus_min

    @property
    def incoming(self) -> tuple[GpuSlot, ...]:
        """GPUs held now that are on their way back (stop or shrink in progress)."""
        return self.held if self.stopping else self.releasing


@dataclass(frozen=True)
class Changes:
    """What changed in a snapshot's jobs since an earlier snapshot of the same caller, so
    that a cycle with a cache (core.DecideCache) need not compare every job to find out.

    `since` is the earlier snapshot's `generation`; `jobs` holds each job added, changed
    or gone since then: its value now, or None when it is gone. The caller promises that
    every other job is the same value as in the earlier snapshot, and that jobs kept
    their relative order there, with new ones after them (the daemon's and the
    simulators' snapshots do: jobs in the order they came). A cache uses the changes
    only if it decided the earlier snapshot last and the counts agree; else it compares
    the jobs itself. Decisions never depend on them: only the time they take."""

    since: int
    generation: int
    jobs: Mapping[JobId, Job | None]


@dataclass(frozen=True)
class Snapshot:
    nodes: tuple[Node, ...]
    jobs: tuple[Job, ...]
    # Decayed GPU-seconds per (consumer, user), for the fairshare order.
    user_usage: Mapping[tuple[ConsumerPath, str], float] = field(default_factory=dict)
    # Optional: what changed since the caller's last snapshot (see Changes).
    changes: Changes | None = None


@dataclass(frozen=True)
class Start:
    job_id: JobId
    slots: tuple[GpuSlot, ...]
    reason: str


@dataclass(frozen=True)
class Grow:
    """Add GPUs to a running elastic job (new workers join at a step boundary)."""

    job_id: JobId
    slots: tuple[GpuSlot, ...]
    reason: str


@dataclass(frozen=True)
class Shrink:
    """Take GPUs above `min` from a running elastic job, without stopping it."""

    job_id: JobId
    slots: tuple[GpuSlot, ...]
    reason: str


@dataclass(frozen=True)
class Preempt:
    """Stop a running job (SIGTERM, grace, SIGKILL) and put it back in the queue."""

    job_id: JobId
    reason: str
    # Why, as a kind (a typed reason, for counts): "reclaim" (a consumer below its
    # entitlement takes borrowed GPUs back) or "priority" (inside one consumer).
    cause: str = "reclaim"


@dataclass(frozen=True)
class ConsumerState:
    """Per consumer, the numbers behind every decision (shown by `schedctl consumers`)."""

    path: ConsumerPath
    demand: int
    entitlement: float
    reserved: float  # owned GPUs held back for a `lend: false` consumer
    allocation: int  # after this plan's starts
    pending_jobs: int
    running_jobs: int


@dataclass(frozen=True)
class Plan:
    starts: tuple[Start, ...]
    pending_reasons: Mapping[JobId, str]
    consumers: Mapping[ConsumerPath, ConsumerState]
    grows: tuple[Grow, ...] = ()
    shrinks: tuple[Shrink, ...] = ()
    preemptions: tuple[Preempt, ...] = ()
    # Free GPUs left idle on purpose, held for a waiting job whose reclaim is under
    # way (SEMANTICS: the cycle, step 3: the one exception besides reservations).
    held: tuple[GpuSlot, ...] = ()
    # Per pool, the consumers' numbers there; `consumers` sums them over the pools.
    # Empty when the cluster is one pool (then `consumers` is that pool's).
    pools: Mapping[str, Mapping[ConsumerPath, ConsumerState]] = field(default_factory=dict)
