"""Bounded disruption (docs/scheduling.md): reclaim counts what a job has already lost.
A job preempted before is taken after jobs that were not, and a job at its consumer's
`max_preemptions` is not preempted for borrowing (priority preemption inside its own
consumer still may)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_core_reclaim import NOW, node, pend, run, tree

from schedulerd.core import Job, Snapshot, decide


def lost(job: Job, times: int) -> Job:
    return replace(job, preemptions=times)


def preempted(policy, jobs) -> set[int]:  # type: ignore[no-untyped-def]
    plan = decide(Snapshot(nodes=(node("n0"),), jobs=tuple(jobs)), policy, NOW)
    return {int(p.job_id) for p in plan.preemptions}


CASES = [
    (
        "the newest-started is the victim when neither was preempted before",
        tree(("/a", dict(owned=2)), ("/b", {})),
        [run(1, "/b", "n0:0-1", age=600), run(2, "/b", "n0:2-3", age=60), pend(10, "/a", 2)],
        {2},
    ),
    (
        "a job preempted before is taken after one that was not, however new",
        tree(("/a", dict(owned=2)), ("/b", {})),
        [
            run(1, "/b", "n0:0-1", age=600),
            lost(run(2, "/b", "n0:2-3", age=60), 1),
            pend(10, "/a", 2),
        ],
        {1},
    ),
    (
        "the least preempted first among jobs preempted before",
        tree(("/a", dict(owned=2)), ("/b", dict(max_preemptions=10))),
        [
            lost(run(1, "/b", "n0:0-1", age=600), 2),
            lost(run(2, "/b", "n0:2-3", age=60), 3),
            pend(10, "/a", 2),
        ],
        {1},
    ),
    (
        "priority still comes first: a lower-priority job preempted before goes first",
        tree(("/a", dict(owned=2)), ("/b", {})),
        [
            lost(run(1, "/b", "n0:0-1", age=600, prio=-1), 1),
            run(2, "/b", "n0:2-3", age=60),
            pend(10, "/a", 2),
        ],
        {1},
    ),
    (
        "at max_preemptions a job is not preempted for borrowing",
        tree(("/a", dict(owned=2)), ("/b", dict(max_preemptions=1))),
        [
            lost(run(1, "/b", "n0:0-1", age=600), 1),
            lost(run(2, "/b", "n0:2-3", age=60), 1),
            pend(10, "/a", 2),
        ],
        set(),
    ),
    (
        "the capped one is skipped, the other taken",
        tree(("/a", dict(owned=2)), ("/b", dict(max_preemptions=1))),
        [
            run(1, "/b", "n0:0-1", age=600),
            lost(run(2, "/b", "n0:2-3", age=60), 1),
            pend(10, "/a", 2),
        ],
        {1},
    ),
    (
        "max_preemptions 0: never preempted for borrowing",
        tree(("/a", dict(owned=2)), ("/b", dict(max_preemptions=0))),
        [run(1, "/b", "n0:0-1", age=600), run(2, "/b", "n0:2-3", age=60), pend(10, "/a", 2)],
        set(),
    ),
    (
        "priority preemption inside a consumer ignores the cap",
        tree(("/a", dict(owned=4, priority_preemption=True, max_preemptions=0))),
        [run(1, "/a", "n0:0-3", prio=0), pend(10, "/a", 4, prio=5)],
        {1},
    ),
]


@pytest.mark.parametrize(
    ("policy", "jobs", "victims"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_victims(policy, jobs, victims) -> None:  # type: ignore[no-untyped-def]
    assert preempted(policy, jobs) == victims


def test_the_daemon_counts_a_preemption_and_not_a_lost_node() -> None:
    """daemon/endings.requeue: a job requeued for reclaim counts one more preemption; one
    whose node went down does not (that was nobody's choice)."""
    from schedulerd.daemon.endings import requeue
    from schedulerd.store import JobRecord, JobState

    class _Change:
        now = 5.0

        def event(self, *args: object) -> None:
            pass

    def job(cause: str) -> JobRecord:
        j = JobRecord(1, "/a", "u", "n", ["true"], {}, "", 1, 1, 0, JobState.RUNNING, 1.0)
        j.requeue_cause = cause
        return j

    preempted, lost_node = job("preempted"), job("lost")
    requeue(_Change(), preempted)  # type: ignore[arg-type]
    requeue(_Change(), lost_node)  # type: ignore[arg-type]
    assert (preempted.preemptions, lost_node.preemptions) == (1, 0)
    assert (preempted.attempt, lost_node.attempt) == (1, 1)
    # Back in the queue now: reclaim_patience counts from here, not from its submission.
    assert (preempted.queued_at, lost_node.queued_at) == (5.0, 5.0)


def test_each_preemption_says_its_cause_as_a_kind() -> None:
    reclaim = decide(
        Snapshot(
            nodes=(node("n0"),),
            jobs=(run(1, "/b", "n0:0-1", age=600), run(2, "/b", "n0:2-3"), pend(10, "/a", 2)),
        ),
        tree(("/a", dict(owned=2)), ("/b", {})),
        NOW,
    )
    assert [p.cause for p in reclaim.preemptions] == ["reclaim"]
    priority = decide(
        Snapshot(nodes=(node("n0"),), jobs=(run(1, "/a", "n0:0-3"), pend(10, "/a", 4, prio=5))),
        tree(("/a", dict(owned=4, priority_preemption=True))),
        NOW,
    )
    assert [p.cause for p in priority.preemptions] == ["priority"]
