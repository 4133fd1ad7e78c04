"""What one cycle keeps for the next (issue 15: the incremental cycle).

The daemon's loop owns one `DecideCache` and hands it to every `decide`. It holds, per
pool, the jobs as the last cycle saw them with an index of the running ones
(running.JobsIndex) and the waiting queues as it left them (queues.PoolQueues), all derived
from the cycles' inputs: a cycle with a cache decides exactly what one without it does
(tests/test_core_incremental.py), only sooner. Not shared between threads: one cycle at
a time uses it.
"""

from __future__ import annotations

from schedulerd.core.queues import PoolQueues
from schedulerd.core.running import JobsIndex


class PoolCache:
    """What one pool's cycle keeps."""

    def __init__(self) -> None:
        self.jobs = JobsIndex()
        self.queues = PoolQueues()


class DecideCache:
    def __init__(self) -> None:
        self._pools: dict[str, PoolCache] = {}
        self._used: set[str] = set()

    def pool(self, name: str) -> PoolCache:
        self._used.add(name)
        kept = self._pools.get(name)
        if kept is None:
            kept = self._pools[name] = PoolCache()
        return kept

    def clear(self) -> None:
        self._pools = {}
        self._used = set()

    def forget_others(self) -> None:
        """Drop the pools this cycle did not decide (gone from the cluster)."""
        for name in self._pools.keys() - self._used:
            del self._pools[name]
        self._used = set()
