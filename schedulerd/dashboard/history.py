"""What the consumer chart draws: a bounded in-memory ring of (entitlement, allocation)
per consumer, sampled from the scheduling loop's consumer states (the last plan's,
ClusterState.consumer_states) every SAMPLE_EVERY_S. In memory only: it starts empty
at every start of the daemon (docs/dashboard.md).

What /ui/api/history answers (`build`) is columnar and thinned before the last hour; the
full answer is cached per set of consumers until the next sample, and `since` a time
gives only the newer samples: a page that polls every few seconds asks for those only."""

from __future__ import annotations

import asyncio
import json
import logging
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from schedulerd.core import ConsumerPath, ConsumerState

log = logging.getLogger("schedulerd.dashboard")

SAMPLE_EVERY_S = 30.0
KEEP = 720  # 6 hours of samples every 30 s
# Consumers charted at most (the shallowest first): 1,000 consumers x 720 samples x
# 2 float32 is under 6 MiB.
MAX_SERIES = 1000
FULL_S = 3600.0  # an answer has every sample of the last hour; before it, one in THIN
THIN = 4
MAX_CACHED = 16  # full answers kept (one per set of consumers) until the next sample


@dataclass(frozen=True)
class _Sample:
    seq: int  # counts the samples since the start
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
        self._seq = 0
        self._cache: dict[tuple[str, ...], bytes] = {}
        self._cache_seq = 0

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
        self._seq += 1
        self._samples.append(_Sample(self._seq, round(now, 3), paths, values))

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

    def encoded(self, consumers: Sequence[str], since: float | None = None) -> bytes:
        """The JSON of /ui/api/history for these consumers (`build`), built here (the
        route builds a full answer in a thread: `cached`, `select`, `build`, `remember`)."""
        body = self.cached(consumers) if since is None else None
        if body is None:
            seq, chosen = self.select(since)
            body = build(chosen, consumers, self.every_s, self.keep)
            if since is None:
                self.remember(consumers, seq, body)
        return body

    def cached(self, consumers: Sequence[str]) -> bytes | None:
        """The full answer for these consumers, if built since the last sample."""
        return self._cache.get(tuple(consumers)) if self._cache_seq == self._seq else None

    def remember(self, consumers: Sequence[str], seq: int, body: bytes) -> None:
        """Keeps a full answer built for the samples up to `seq`."""
        if seq != self._seq:
            return  # a sample came while it was built
        if self._cache_seq != seq:
            self._cache.clear()
            self._cache_seq = seq
        if len(self._cache) >= MAX_CACHED:
            self._cache.pop(next(iter(self._cache)))
        self._cache[tuple(consumers)] = body

    def select(self, since: float | None) -> tuple[int, list[_Sample]]:
        """The samples an answer has, oldest first (those after `since` if given;
        before the last hour, one in THIN), and the number of the newest sample. A
        sample is never changed: `build` may read them in another thread."""
        newest = self._samples[-1].time if self._samples else 0.0
        chosen: list[_Sample] = []
        for s in reversed(self._samples):  # newest first: `since` stops early
            if since is not None and s.time <= since:
                break
            if s.time >= newest - FULL_S or s.seq % THIN == 0:
                chosen.append(s)
        chosen.reverse()
        return self._seq, chosen

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


def build(chosen: Sequence[_Sample], consumers: Sequence[str], every_s: float, keep: int) -> bytes:
    """{"every_s", "keep_s", "times": [t, ...], "series": {path: [[entitlement, ...],
    [allocation, ...]]}} as JSON for the consumers asked for, each list aligned with
    "times" (null where the consumer was not sampled; both empty where it never was)."""
    wanted = set(consumers)
    es: dict[str, list[float | None]] = {}
    als: dict[str, list[float | None]] = {}
    start = 0
    while start < len(chosen):  # runs of samples of the same tree, column by column
        paths = chosen[start].paths
        end = start + 1
        while end < len(chosen) and chosen[end].paths is paths:
            end += 1
        rows = [s.values.tolist() for s in chosen[start:end]]
        for i, p in enumerate(paths):
            if p not in wanted:
                continue
            e = es.get(p)
            if e is None:
                e = es[p] = []
                als[p] = []
            a = als[p]
            if len(e) < start:  # absent from the samples since it was last seen
                e.extend([None] * (start - len(e)))
                a.extend([None] * (start - len(a)))
            e.extend([round(r[2 * i], 3) for r in rows])
            a.extend([_short(r[2 * i + 1]) for r in rows])
        start = end
    total = len(chosen)
    series: dict[str, list[list[float | None]]] = {}
    for p in consumers:
        e = es.get(p)
        if e is None:
            series[p] = [[], []]
            continue
        a = als[p]
        e.extend([None] * (total - len(e)))
        a.extend([None] * (total - len(a)))
        series[p] = [e, a]
    answer = {
        "every_s": every_s,
        "keep_s": every_s * keep,
        "times": [s.time for s in chosen],
        "series": series,
    }
    return json.dumps(answer, separators=(",", ":")).encode()


def _short(x: float) -> float:
    return int(x) if x.is_integer() else round(x, 3)
