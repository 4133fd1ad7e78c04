"""A leaf's queue extended with jobs that come after all of it (a burst of submissions:
queues.LeafQueue.extended) is the queue built from every job, field by field, and the
queue it was extended from is left as it was (the last plan's reasons may read it)."""

from __future__ import annotations

import random

import pytest

from schedulerd.core.model import ConsumerPath, Job, JobId, JobPhase, Order
from schedulerd.core.ordering import queue_order, static_key
from schedulerd.core.queues import LeafQueue, _appended


def _job(i: int, rng: random.Random, priority: int) -> Job:
    gpus = rng.choice([1, 1, 2, 4])
    return Job(
        JobId(i),
        ConsumerPath("/a"),
        "u",
        gpus,
        gpus + rng.choice([0, 0, 2]),
        priority,
        i,
        JobPhase.PENDING,
        time_limit_s=rng.choice([None, 60.0]),
    )


def _fields(q: LeafQueue) -> tuple[object, ...]:
    return (q.jobs, q.index, list(q.at.items()), q.timed, q.demand, q.key)


@pytest.mark.parametrize("order", [Order.FIFO, Order.PRIORITY])
@pytest.mark.parametrize("seed", range(20))
def test_an_extended_queue_is_the_queue_built_again(order: Order, seed: int) -> None:
    rng = random.Random(seed)
    first = [_job(i, rng, 5) for i in range(rng.randint(0, 30))]
    q = LeafQueue(queue_order(order, first, [], {}))
    before = _fields(q)
    later = range(100, 100 + rng.randint(1, 8))
    more = [_job(i, rng, rng.choice([5, 5, 0, 0, 0, 9])) for i in later]
    rng.shuffle(more)  # the changes' order is not the queue's
    extended = _appended(q, more, order)
    built = LeafQueue(queue_order(order, first + more, [], {}))
    key = static_key(order)
    assert key is not None
    if first and min(map(key, more)) <= key(q.jobs[-1]):
        assert extended is None  # one goes before a job already queued: built again
    else:
        assert extended is not None
        assert _fields(extended) == _fields(built)
    assert _fields(q) == before


def test_fairshare_queues_are_never_extended() -> None:
    rng = random.Random(1)
    q = LeafQueue(queue_order(Order.FAIRSHARE, [_job(0, rng, 0)], [], {}))
    assert _appended(q, [_job(1, rng, 0)], Order.FAIRSHARE) is None
