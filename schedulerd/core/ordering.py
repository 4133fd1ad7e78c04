"""Each leaf consumer's own order of its waiting jobs (SEMANTICS: the cycle, step 2)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from schedulerd.core.model import Job, Order


def queue_order(
    order: Order,
    pending: Iterable[Job],
    running: Iterable[Job],
    usage: Mapping[str, float],
) -> list[Job]:
    """The leaf's pending jobs, first to be served first.

    - priority: higher priority first, then submit order;
    - fifo: submit order;
    - fairshare: the user with the least usage first, where usage is first the
      GPUs the user runs now plus the jobs of theirs already ahead in this queue
      (so users take turns within one cycle), then their decayed GPU-seconds.
    """
    jobs = list(pending)
    key = static_key(order)
    if key is not None:
        return sorted(jobs, key=key)
    turns: Counter[str] = Counter()
    for j in running:
        turns[j.user] += len(j.held)
    keyed = []
    for j in sorted(jobs, key=lambda j: j.submit_seq):
        keyed.append(((turns[j.user], usage.get(j.user, 0.0), j.submit_seq), j))
        turns[j.user] += j.gpus
    return [j for _, j in sorted(keyed, key=lambda kj: kj[0])]


def _by_priority(j: Job) -> tuple[int, int]:
    return (-j.priority, j.submit_seq)


def _by_submission(j: Job) -> tuple[int, int]:
    return (0, j.submit_seq)


def static_key(order: Order) -> Callable[[Job], tuple[int, int]] | None:
    """The sort key of an order in which a job's place depends on the job alone (every
    key distinct: submit_seq is unique), so that a job can be placed among the others
    without sorting them again; None for fairshare (a place depends on the others)."""
    if order is Order.PRIORITY:
        return _by_priority
    if order is Order.FIFO:
        return _by_submission
    return None
