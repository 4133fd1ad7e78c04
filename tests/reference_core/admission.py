"""The admission checks of one cycle and the state they read (SEMANTICS: the cycle,
steps 2-3): allocations up the tree, free GPUs, limits, borrow, reservations."""

from __future__ import annotations

from collections import defaultdict

from reference_core.placement import FreeGpus
from schedulerd.core.entitlement import Division
from schedulerd.core.model import ROOT, ConsumerPath, GpuSlot, Job, Policy

_EPS = 1e-9


def takes_back(held: float, entitlement: float, receiver_after: float) -> bool:
    """Reclaim's rule for a victim consumer (SEMANTICS: reclaim, step 4): only borrowed
    GPUs are taken back, and only from a consumer that stays further above its
    entitlement than the receiver will be after the move. One function: reclaim
    applies it, reservations ask it whether reclaim could serve a job."""
    if held <= entitlement + _EPS:
        return False
    return entitlement <= _EPS or held / entitlement > receiver_after + _EPS


class Admission:
    def __init__(self, policy: Policy, division: Division, free: FreeGpus) -> None:
        self.policy = policy
        self.division = division
        self.free = free
        self.allocation: dict[ConsumerPath, int] = defaultdict(int)
        self._reserved_outside: dict[ConsumerPath, float] = {}
        # The fair pass admits only consumers below their entitlement (all the way
        # up the tree); the borrowing pass, after reclaim has held its GPUs, all.
        self.fair_only = False

    def count_running(self, job: Job) -> None:
        for p in self.chain(job.consumer):
            self.allocation[p] += len(job.held)

    def ratio(self, path: ConsumerPath) -> float:
        ent = self.division.entitlement.get(path, 0.0)
        alloc = self.allocation[path]
        # A consumer entitled to nothing only ever borrows: it comes last.
        return alloc / ent if ent > _EPS else float("inf")

    def starvation_key(self, path: ConsumerPath) -> tuple[float, int, str]:
        """Most starved first: lowest allocation/entitlement, then fewest GPUs
        held (orders the pure borrowers, whose entitlement is 0), then path."""
        return (self.ratio(path), self.allocation[path], path)

    def usable_free(self, leaf: ConsumerPath) -> float:
        """Free GPUs this leaf may take: all free ones minus reservations of
        `lend: false` consumers outside its own chain."""
        others = self._reserved_outside.get(leaf)
        if others is None:  # reservations are fixed for the cycle: compute once per leaf
            chain = set(self.policy.ancestors(leaf))
            others = sum(r for p, r in self.division.reserved.items() if p not in chain)
            self._reserved_outside[leaf] = others
        return self.free.total - others

    def blocker(self, leaf: ConsumerPath, n: int) -> str | None:
        """Why a job of n GPUs in `leaf` cannot start now, as a short code, or None."""
        for p in self.policy.ancestors(leaf):
            spec = self.policy.consumers[p]
            if spec.limit is not None and self.allocation[p] + n > spec.limit:
                return f"limit:{p}"
            ent = self.division.entitlement.get(p, 0.0)
            if not spec.borrow and p != ROOT and self.allocation[p] + n > ent + _EPS:
                return f"borrow:{p}"
            if self.fair_only and p != ROOT and self.allocation[p] >= ent - _EPS:
                return f"fair:{p}"
        if self.usable_free(leaf) + _EPS < n:
            return "reserved" if self.free.total >= n else "capacity"
        if not self.free.can_place(n):
            return "fragmented"
        return None

    def start(self, job: Job) -> tuple[GpuSlot, ...]:
        slots = self.free.place(job.gpus)
        assert slots is not None, "start() after blocker() said yes"
        self.add(job.consumer, len(slots))
        return slots

    def add(self, leaf: ConsumerPath, n: int) -> None:
        """Count n more (or, negative, fewer) GPUs held by `leaf` and its ancestors."""
        for p in self.chain(leaf):
            self.allocation[p] += n

    def chain(self, path: ConsumerPath) -> tuple[ConsumerPath, ...]:
        # Running jobs of a consumer that the policy in force dropped still
        # count at the root, so capacity and allocations stay whole.
        return self.policy.ancestors(path) if path in self.policy.consumers else (ROOT,)
