"""What the consumer chart draws: a bounded in-memory ring of (entitlement, allocation)
per consumer, sampled from the scheduling loop's consumer states (the last plan's,
ClusterState.consumer_states) every SAMPLE_EVERY_S. In memory only: it starts empty
at every start of the daemon (docs/dashboard.md)."""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from schedulerd.core import ConsumerPath, ConsumerState

log = logging.getLogger("schedulerd.dashboard")

SAMPLE_EVERY_S = 30.0
KEEP = 720  # 6 hours of samples every 30 s
# Consumers charted at most (the shallowest first): 1,000 consumers x 720 samples x
# 2 float32 is under 6 MiB.
MAX_SERIES = 1000


@dataclass(frozen=True)
class _Sample:
    time: float
    paths: tuple[str, ...]  # shared between samples while the tree is the same
    values: array[float]  # entitlement, allocation of each path in turn (float32)


class History:
    def __init__(
        self, every_s: float = SAMPLE_EVERY_S, keep: int = KEEP, max_series: int = MAX_SERIES
    ) -> None:
        self.every_s = every_s
        self.keep = keep
        self.max_series = max_series
        self._samples: deque[_Sample] = deque(maxlen=keep)

    def sample(self, now: float, states: Mapping[ConsumerPath, ConsumerState]) -> None:
        paths: tuple[str, ...] = tuple(
            sorted(states, key=lambda p: (p.count("/"), p))[: self.max_series]
        )
        last = self._samples[-1] if self._samples else None
        if last is not None and last.paths == paths:
            paths = last.paths  # one tuple for every sample of the same tree
        values = array("f")
        for p in paths:
            s = states[ConsumerPath(p)]
            values.append(s.entitlement)
            values.append(float(s.allocation))
        self._samples.append(_Sample(now, paths, values))

    def series(self, consumers: Iterable[str]) -> dict[str, list[tuple[float, float, float]]]:
        """(time, entitlement, allocation) per consumer asked for, oldest first."""
        wanted = set(consumers)
        out: dict[str, list[tuple[float, float, float]]] = {c: [] for c in wanted}
        index: dict[str, int] = {}
        paths: tuple[str, ...] | None = None
        for s in self._samples:
            if s.paths is not paths:
                paths = s.paths
                index = {p: i for i, p in enumerate(paths) if p in wanted}
            for p, i in index.items():
                out[p].append((s.time, round(s.values[2 * i], 3), s.values[2 * i + 1]))
        return out

    async def run(
        self,
        clock: Callable[[], float],
        states: Callable[[], Mapping[ConsumerPath, ConsumerState]],
    ) -> None:
        await asyncio.sleep(min(self.every_s, 2.0))  # the loop's first cycle, first
        while True:
            try:
                now_states = states()
                if now_states:  # none before the loop's first cycle
                    self.sample(clock(), now_states)
            except Exception:  # a chart must never take the daemon down
                log.exception("dashboard history: sampling failed")
            await asyncio.sleep(self.every_s)
