"""What a simulated run measures, integrated over virtual time.

The engine hands the recorder the cluster's state at every change (an arrival, an
end, a cycle's plan); the state holds until the next change, so each measure is an
exact time integral of a piecewise-constant function, not a sample.

- allocation while demand exists: allocated GPU-time / ∫ min(capacity, demand) dt;
- idle beside a waiting job: time during which, right after a cycle, free GPUs
  (not held for a reclaim in progress) could have taken a waiting job;
- GPU-time wanted while GPUs sat free (fragmentation): ∫ min(free GPUs not held for
  a reclaim or a reservation, GPUs wanted by waiting jobs) dt, right after each
  cycle: what waiting jobs wanted while GPUs sat free, whether or not one of them
  fit (8 GPUs wanted beside 2 + 2 free on two nodes counts 4);
- fairness error: Σ over consumers |allocation - entitlement| / capacity,
  averaged over the time some demand exists;
- Jain's index of allocation/entitlement over the backlogged consumers (those with
  a job waiting), averaged over the time at least two are backlogged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all values are equal, 1/n when one has all."""
    if not values:
        return 1.0
    total = sum(values)
    squares = sum(v * v for v in values)
    if squares == 0:
        return 1.0
    return total * total / (len(values) * squares)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN when empty."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class ClusterState:
    """The state between two changes, per consumer in `Recorder.consumers` order."""

    allocation: list[int]
    entitlement: list[float]
    backlogged: list[bool]
    demand: int  # GPUs wanted by all running and waiting jobs
    idle_beside_waiting: bool
    # Right after a cycle: min(free GPUs not held for a reclaim or a reservation,
    # GPUs wanted by waiting jobs); 0 between an event and the next cycle.
    wanted_while_free: int = 0


@dataclass
class Series:
    """Per consumer, GPU-seconds of allocation and entitlement in fixed time bins,
    for the plots."""

    bin_s: float
    origin: float
    allocation: list[list[float]] = field(default_factory=list)  # [bin][consumer]
    entitlement: list[list[float]] = field(default_factory=list)

    def add(self, t0: float, t1: float, alloc: Sequence[int], ent: Sequence[float]) -> None:
        while t0 < t1:
            b = int((t0 - self.origin) // self.bin_s)
            end = min(t1, self.origin + (b + 1) * self.bin_s)
            if end <= t0:  # rounding put t0 in the bin before its boundary
                b += 1
                end = min(t1, self.origin + (b + 1) * self.bin_s)
            while len(self.allocation) <= b:
                self.allocation.append([0.0] * len(alloc))
                self.entitlement.append([0.0] * len(alloc))
            dt = end - t0
            row_a, row_e = self.allocation[b], self.entitlement[b]
            for i, a in enumerate(alloc):
                if a:
                    row_a[i] += a * dt
            for i, e in enumerate(ent):
                if e:
                    row_e[i] += e * dt
            t0 = end


class Recorder:
    def __init__(self, consumers: Sequence[str], capacity: int, start: float, bin_s: float):
        self.consumers = tuple(consumers)
        self.capacity = capacity
        self.t = start
        n = len(self.consumers)
        self.state = ClusterState([0] * n, [0.0] * n, [False] * n, 0, False)
        self._derive()
        self.series = Series(bin_s=bin_s, origin=start)
        self.span_s = 0.0
        self.allocated_gpu_s = 0.0
        self.wanted_gpu_s = 0.0  # ∫ min(capacity, demand) dt
        self.demand_s = 0.0  # time with any demand
        self.fairness_error_s = 0.0
        self.jain_s = 0.0
        self.contended_s = 0.0  # time with >= 2 consumers backlogged
        self.idle_beside_waiting_s = 0.0
        self.wanted_while_free_gpu_s = 0.0  # ∫ ClusterState.wanted_while_free dt

    def set(self, state: ClusterState) -> None:
        self.state = state
        self._derive()

    def _derive(self) -> None:
        s = self.state
        self._allocated = sum(s.allocation)
        self._wanted = min(self.capacity, s.demand)
        self._error = (
            sum(abs(a - e) for a, e in zip(s.allocation, s.entitlement, strict=True))
            / self.capacity
        )
        ratios = [
            a / e
            for a, e, b in zip(s.allocation, s.entitlement, s.backlogged, strict=True)
            if b and e > 0
        ]
        self._jain = jain(ratios) if len(ratios) >= 2 else None

    def advance(self, t: float) -> None:
        dt = t - self.t
        if dt <= 0:
            return
        s = self.state
        self.span_s += dt
        self.allocated_gpu_s += self._allocated * dt
        self.wanted_gpu_s += self._wanted * dt
        if s.demand > 0:
            self.demand_s += dt
            self.fairness_error_s += self._error * dt
        if self._jain is not None:
            self.contended_s += dt
            self.jain_s += self._jain * dt
        if s.idle_beside_waiting:
            self.idle_beside_waiting_s += dt
        self.wanted_while_free_gpu_s += s.wanted_while_free * dt
        self.series.add(self.t, t, s.allocation, s.entitlement)
        self.t = t

    @property
    def allocation_while_demand(self) -> float:
        return self.allocated_gpu_s / self.wanted_gpu_s if self.wanted_gpu_s else math.nan

    @property
    def wanted_while_free_share(self) -> float:
        """GPU-time wanted while GPUs sat free, as a share of ∫ min(capacity, demand)."""
        return self.wanted_while_free_gpu_s / self.wanted_gpu_s if self.wanted_gpu_s else math.nan

    @property
    def fairness_error(self) -> float:
        return self.fairness_error_s / self.demand_s if self.demand_s else math.nan

    @property
    def jain_index(self) -> float:
        return self.jain_s / self.contended_s if self.contended_s else math.nan
