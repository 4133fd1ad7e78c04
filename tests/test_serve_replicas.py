"""Replica planning (schedulerd/serve/replicas.py): scale and roll, one rule a case."""

from __future__ import annotations

from schedulerd.serve.replicas import ReplicaView, plan_replicas


def r(number: int, gen: int = 1, ready: bool = True, running: bool = True, counts: bool = True):
    return ReplicaView(number, gen, counts, running and (ready or running), ready)


def test_adds_up_to_desired() -> None:
    p = plan_replicas(4, 1, [r(0)])
    assert (p.add, p.drain, p.stop) == (3, (), ())


def test_draining_ones_do_not_count() -> None:
    p = plan_replicas(2, 1, [r(0), r(1, counts=False)])
    assert p.add == 1


def test_scale_down_takes_waiting_then_starting_then_newest_ready() -> None:
    reps = [r(0), r(1), r(2), r(3, ready=False), r(4, ready=False, running=False)]
    p = plan_replicas(3, 1, reps)
    assert (p.add, p.drain, p.stop) == (0, (), (4, 3))
    p = plan_replicas(1, 1, reps)
    assert p.stop == (4, 3) and p.drain == (2, 1)


def test_nothing_to_do() -> None:
    assert plan_replicas(2, 1, [r(0), r(1)]).empty


def test_rollout_surges_one_then_swaps_one_for_one() -> None:
    reps = [r(0), r(1)]
    p = plan_replicas(2, 2, reps)  # generation 2 asked: one new beside the two old
    assert (p.add, p.drain, p.stop) == (1, (), ())
    reps.append(r(2, gen=2, ready=False))
    assert plan_replicas(2, 2, reps).empty  # wait for it to be ready
    reps[-1] = r(2, gen=2)
    p = plan_replicas(2, 2, reps)  # ready: drain an old one, start the next new one
    assert (p.add, p.drain) == (1, (1,))
    reps = [r(0), r(1, counts=False), r(2, gen=2), r(3, gen=2)]
    p = plan_replicas(2, 2, reps)
    assert (p.add, p.drain) == (0, (0,))
    assert plan_replicas(2, 2, [r(2, gen=2), r(3, gen=2)]).empty


def test_rollout_never_takes_a_new_replica_for_an_old_one() -> None:
    reps = [r(0), r(1), r(2, gen=2, ready=False)]
    p = plan_replicas(2, 2, reps)
    assert p.empty


def test_rollout_while_scaling_down_drops_old_first() -> None:
    p = plan_replicas(1, 2, [r(0), r(1), r(2, gen=2)])
    assert p.drain == (1, 0) or set(p.drain) == {0, 1}
    assert p.add == 0


def test_backoff_holds_adds_but_not_removals() -> None:
    p = plan_replicas(3, 1, [r(0)], may_add=False)
    assert p.empty
    p = plan_replicas(0, 1, [r(0)], may_add=False)
    assert p.drain == (0,)


def test_to_zero_during_a_rollout_removes_every_replica() -> None:
    p = plan_replicas(0, 2, [r(0), r(1, gen=2, ready=False)])
    assert p.drain == (0,) and p.stop == (1,)


def test_a_rollout_that_cannot_place_its_new_replica_replaces_one_in_place() -> None:
    reps = [r(0), r(1), r(2, gen=2, ready=False, running=False)]
    assert plan_replicas(2, 2, reps).empty  # waiting for a GPU beside the old ones
    p = plan_replicas(2, 2, reps, in_place=True)
    assert (p.add, p.drain, p.stop) == (0, (1,), ())
    reps = [r(0), r(1), r(2, gen=2, ready=False, running=True)]
    assert plan_replicas(2, 2, reps, in_place=True).empty  # placed: wait for it to be ready
