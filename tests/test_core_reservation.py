"""Reservations and backfill (schedulerd/core/reservation.py, docs/scheduling.md): a
large job that cannot be placed gets a node whose free GPUs are held for it, and only
jobs that end before it could start (by their declared time limits) use them meanwhile.
One rule a case."""

from __future__ import annotations

from dataclasses import replace

from test_core_reclaim import NOW, node, pend, run, tree

from schedulerd.core import Job, JobId, Snapshot, decide

ONE = tree(("/a", dict(owned=16)))


def timed(job: Job, limit_s: float) -> Job:
    return replace(job, time_limit_s=limit_s)


def plan(policy, nodes, jobs):  # type: ignore[no-untyped-def]
    return decide(Snapshot(nodes=tuple(nodes), jobs=tuple(jobs)), policy, NOW)


def started(p) -> dict[int, set[str]]:  # type: ignore[no-untyped-def]
    return {int(s.job_id): {f"{x.node}:{x.index}" for x in s.slots} for s in p.starts}


# n0: 7 of 8 busy, n1: 6 of 8 busy; /a's first waiting job needs a whole node.
BUSY = [run(1, "/a", "n0:0-6"), run(2, "/a", "n1:0-5")]
NODES = [node("n0", 8), node("n1", 8)]


def test_small_jobs_do_not_take_the_gpus_freed_for_a_large_one() -> None:
    p = plan(ONE, NODES, [*BUSY, pend(10, "/a", 8), pend(11, "/a", 1), pend(12, "/a", 1)])
    # n1 has the most free (2): held for job 10; job 11 gets n0's one free GPU.
    assert started(p) == {11: {"n0:7"}}
    assert {f"{s.node}:{s.index}" for s in p.held} == {"n1:6", "n1:7"}
    assert "holds a reservation on n1: 2 of its 8 GPUs" in p.pending_reasons[JobId(10)]
    assert "start time unknown" in p.pending_reasons[JobId(10)]


def test_without_a_large_job_first_small_ones_fill_every_gpu() -> None:
    p = plan(ONE, NODES, [*BUSY, pend(11, "/a", 1), pend(12, "/a", 1), pend(13, "/a", 1)])
    assert set(started(p)) == {11, 12, 13} and not p.held


def test_a_job_that_fits_now_starts_and_needs_no_reservation() -> None:
    p = plan(ONE, NODES, [run(1, "/a", "n0:0-6"), pend(10, "/a", 8), pend(11, "/a", 1)])
    assert started(p)[10] == {f"n1:{i}" for i in range(8)}
    assert not p.held


def test_backfill_only_what_ends_before_the_reservation_starts() -> None:
    # The holders of n1's busy GPUs end within an hour: job 10 starts in an hour at most.
    busy = [run(1, "/a", "n0:0-6"), timed(run(2, "/a", "n1:0-5", age=600), 4200.0)]
    jobs = [
        *busy,
        pend(10, "/a", 8),
        pend(11, "/a", 1),  # takes n0's free GPU (no reservation there)
        timed(pend(12, "/a", 2), 7200.0),  # too long: would delay job 10
        pend(13, "/a", 1),  # no time limit: never backfills
        timed(pend(14, "/a", 2), 1800.0),  # ends in time: backfills n1's 2 held GPUs
    ]
    p = plan(ONE, NODES, jobs)
    assert started(p) == {11: {"n0:7"}, 14: {"n1:6", "n1:7"}}
    assert "backfilled on GPUs held for job 10" in next(
        s.reason for s in p.starts if s.job_id == JobId(14)
    )
    assert "expected to start in 60 min" in p.pending_reasons[JobId(10)]
    assert not p.held


def test_no_reservation_when_reclaim_can_take_borrowed_gpus() -> None:
    # /b borrows (entitled to 0): reclaim, not a reservation, serves /a's job.
    policy = tree(("/a", dict(owned=8)), ("/b", dict(share=0)))
    jobs = [run(1, "/b", "n0:0-6", age=3600), run(2, "/b", "n1:0-5", age=3600)]
    p = plan(policy, NODES, [*jobs, pend(10, "/a", 8)])
    assert p.preemptions and "reservation" not in p.pending_reasons[JobId(10)]


def test_no_reservation_for_a_consumer_that_borrows() -> None:
    # /a holds 13 where it is entitled to 4 (/b wants its 12): nothing is held for /a.
    policy = tree(("/a", dict(owned=4)), ("/b", dict(owned=12)))
    jobs = [*BUSY, pend(10, "/a", 8), *(pend(20 + i, "/b", 1) for i in range(12))]
    p = plan(policy, NODES, jobs)
    assert "reservation" not in p.pending_reasons[JobId(10)]


def test_a_job_larger_than_any_node_reserves_the_fewest_nodes() -> None:
    nodes = [node("n0", 4), node("n1", 4), node("n2", 4), node("n3", 4)]
    jobs = [
        run(1, "/a", "n0:0-2"),
        run(2, "/a", "n1:0-1"),
        run(3, "/a", "n2:0-3"),
        run(4, "/a", "n3:0"),
        pend(10, "/a", 8),
        pend(11, "/a", 1),
    ]
    p = plan(ONE, nodes, jobs)
    # n3 (3 free) and n1 (2 free) make 8 GPUs: held for job 10; job 11 goes to n0.
    assert {f"{s.node}:{s.index}" for s in p.held} == {"n3:1", "n3:2", "n3:3", "n1:2", "n1:3"}
    assert started(p) == {11: {"n0:3"}}
    assert "reservation on n3, n1" in p.pending_reasons[JobId(10)]


def test_at_most_one_reservation_per_four_nodes_most_starved_first() -> None:
    policy = tree(("/a", dict(owned=8)), ("/b", dict(owned=8)))
    jobs = [run(1, "/a", "n0:0-6"), run(2, "/b", "n1:0-5"), pend(10, "/a", 8), pend(20, "/b", 8)]
    p = plan(policy, NODES, jobs)
    # /b holds 6 of 8, /a 7 of 8: /b is the more starved, and two nodes allow one.
    assert "reservation on n1" in p.pending_reasons[JobId(20)]
    assert "reservation" not in p.pending_reasons[JobId(10)]


def test_a_more_starved_consumer_that_can_start_now_comes_before_a_reservation() -> None:
    # /y holds 0 of its 4 and its 4-GPU job fits n1 now: it starts there; /x (10 of 12)
    # does not hold n1 for its 8-GPU job first.
    policy = tree(("/y", dict(owned=4)), ("/x", dict(owned=12)))
    busy = [run(1, "/x", "n0:0-5"), run(2, "/x", "n1:0-3")]
    p = plan(policy, NODES, [*busy, pend(10, "/x", 8), pend(20, "/y", 4)])
    assert started(p) == {20: {"n1:4", "n1:5", "n1:6", "n1:7"}}


def test_a_reservation_never_holds_the_gpus_a_lend_false_consumer_keeps() -> None:
    policy = tree(("/l", dict(owned=4, lend=False)), ("/x", dict(owned=12)))
    busy = [run(1, "/x", "n0:0-5"), run(2, "/x", "n1:0-3")]
    p = plan(policy, NODES, [*busy, pend(10, "/x", 8), pend(20, "/l", 4)])
    assert started(p) == {20: {"n1:4", "n1:5", "n1:6", "n1:7"}}
    assert {f"{s.node}:{s.index}" for s in p.held} <= {"n0:6", "n0:7"}


def test_the_reservation_stays_where_jobs_backfilled() -> None:
    # Cycle 1 backfills n1's held GPUs; in cycle 2 n1 has none free but its holders end
    # by their time limits: the reservation stays on n1 rather than moving to n0.
    busy = [run(1, "/a", "n0:0-6"), timed(run(2, "/a", "n1:0-5", age=600), 4200.0)]
    first = plan(ONE, NODES, [*busy, pend(10, "/a", 8), timed(pend(14, "/a", 2), 1800.0)])
    assert started(first)[14] == {"n1:6", "n1:7"}
    backfilled = timed(run(14, "/a", "n1:6-7", age=1), 1800.0)
    second = plan(ONE, NODES, [*busy, backfilled, pend(10, "/a", 8)])
    assert "reservation on n1" in second.pending_reasons[JobId(10)]


def test_a_job_reclaim_cannot_serve_still_gets_a_reservation() -> None:
    # /b borrows, but its job is at max_preemptions: reclaim takes nothing, so /a's 8-GPU
    # job holds n0's free GPUs against /b's waiting 1-GPU jobs.
    policy = tree(("/a", dict(owned=8)), ("/b", dict(share=0)))
    jobs = [
        run(1, "/a", "n0:0-5", age=3600),
        replace(run(2, "/b", "n1:0-6", age=3600), preemptions=3),
        pend(10, "/a", 8),
        pend(21, "/b", 1),
        pend(22, "/b", 1),
    ]
    p = plan(policy, NODES, jobs)
    assert not p.preemptions
    assert "reservation on n0" in p.pending_reasons[JobId(10)]
    assert all(s.node != "n0" for st in p.starts for s in st.slots)
