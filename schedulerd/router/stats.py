"""What the router counts per service for its load reports: requests in flight now,
requests answered and failed since the previous report with their latencies, and totals
since the start. Pure: latencies are given in, no clock is read here.

Latencies of one report interval are a bounded uniform sample (reservoir sampling): a
service answering more requests than the sample holds in one interval still gets its
percentiles from a fair sample, in bounded memory.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SAMPLE_SIZE = 4096  # latencies kept per service and report interval


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100) of sorted values; 0 for none."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Interval:
    """The numbers of one report interval."""

    requests: int
    failed: int
    p50_ms: float
    p99_ms: float


@dataclass
class ServiceStats:
    in_flight: int = 0  # sent to a replica, not answered yet
    requests: int = 0
    failed: int = 0
    requests_total: int = 0
    failed_total: int = 0
    _sample: list[float] = field(default_factory=list)
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def answered(self, latency_ms: float, *, failed: bool) -> None:
        """A request of this service was answered (by a replica or by the router);
        `failed`: the router itself answered it 502, 503 or 504."""
        self.requests += 1
        self.requests_total += 1
        if failed:
            self.failed += 1
            self.failed_total += 1
        if len(self._sample) < SAMPLE_SIZE:
            self._sample.append(latency_ms)
        else:  # reservoir: the n-th latency replaces a kept one with chance SAMPLE_SIZE/n
            slot = self._rng.randrange(self.requests)
            if slot < SAMPLE_SIZE:
                self._sample[slot] = latency_ms

    def take(self) -> Interval:
        """The interval's numbers; the next interval starts empty."""
        ordered = sorted(self._sample)
        out = Interval(self.requests, self.failed, percentile(ordered, 50), percentile(ordered, 99))
        self.requests = self.failed = 0
        self._sample = []
        return out


class Stats:
    """ServiceStats by service id (a service deleted and created again under the same
    name is another service)."""

    def __init__(self) -> None:
        self._by_id: dict[int, ServiceStats] = {}

    def of(self, service_id: int) -> ServiceStats:
        found = self._by_id.get(service_id)
        if found is None:
            found = self._by_id[service_id] = ServiceStats()
        return found

    def prune(self, keep: Iterable[int]) -> None:
        """Forget services that left the table once nothing of theirs is in flight:
        the stats are bounded by the table."""
        wanted = set(keep)
        for sid in [s for s, st in self._by_id.items() if s not in wanted and not st.in_flight]:
            del self._by_id[sid]
