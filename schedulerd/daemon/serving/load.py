"""What the router reported of each service: the samples the autoscaler reads, each
replica's readiness and requests in flight (drains end on them), and the latency
and totals `schedctl serve show` prints. In memory: after a restart the router's
next reports refill it within a window."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from schedulerd.serve.autoscale import LoadSample

MAX_SAMPLES = 4096  # per service: a report a second over the longest window, and then some


@dataclass
class ReplicaSeen:
    job_id: int
    ready: bool
    in_flight: int
    table_version: int  # the route table the router had when it said so
    at: float


@dataclass
class LoadBook:
    samples: deque[LoadSample] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    replicas: dict[int, ReplicaSeen] = field(default_factory=dict)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests_total: int = 0
    failed_total: int = 0
    reported_at: float | None = None
    table_version: int = 0

    def window(self, now: float, window_s: float) -> list[LoadSample]:
        return [s for s in self.samples if now - window_s <= s.at <= now]

    def summary(self, now: float, window_s: float) -> tuple[float, float, float]:
        """(in flight, held, requests/s), averaged over the window."""
        got = self.window(now, window_s)
        if not got:
            return 0.0, 0.0, 0.0
        n = len(got)
        span = max(window_s, 1e-9)
        return (
            sum(s.in_flight for s in got) / n,
            sum(s.queued for s in got) / n,
            sum(s.requests for s in got) / span,
        )

    def drained(self, number: int, since_version: int) -> bool:
        """Whether the router, with a table that already had this replica draining,
        reported it with nothing in flight (or no longer knows it)."""
        if self.table_version < since_version:
            return False
        seen = self.replicas.get(number)  # from the latest report only
        return seen is None or seen.in_flight == 0
