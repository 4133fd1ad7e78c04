"""Reclaim, priority preemption and growth in `decide()` (SEMANTICS: "The cycle" steps
3-6, "Reclaim with grace").

Each case names the rule it checks and states the whole plan the rule gives: exactly
which jobs start (and where), which elastic jobs shrink or grow (and which GPUs), which
jobs are preempted, which free GPUs are held; anything not listed must not happen.
Every case also goes through the checks that hold for any plan (victims are running,
old enough, keep their anchor and their `min`; held GPUs are free and given to no one;
a reason for every decision and every waiting job; the same plan for the same input in
any order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from schedulerd.core import (
    ROOT,
    ConsumerPath,
    ConsumerPolicy,
    GpuSlot,
    Job,
    JobId,
    JobPhase,
    Node,
    NodeName,
    Plan,
    Policy,
    Snapshot,
    decide,
)

NOW = 10_000.0


# --- builders ---------------------------------------------------------------


def slots(*specs: str) -> tuple[GpuSlot, ...]:
    """ "n0:0-3" is GPUs 0..3 of n0; "n1:2" is one GPU; "n0:1,n1:0" two."""
    out = []
    for spec in specs:
        for part in spec.split(","):
            name, _, idx = part.partition(":")
            lo, _, hi = idx.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                out.append(GpuSlot(NodeName(name), i))
    return tuple(out)


def node(name: str, gpus: int = 4) -> Node:
    return Node(NodeName(name), tuple(range(gpus)))


def tree(*specs: tuple[str, dict[str, Any]]) -> Policy:
    consumers = {ROOT: ConsumerPolicy(ROOT)}
    for path, fields in specs:
        consumers[ConsumerPath(path)] = ConsumerPolicy(ConsumerPath(path), **fields)
    return Policy(consumers=consumers)


def pend(job_id: int, consumer: str, gpus: int = 1, *, most: int = 0, prio: int = 0) -> Job:
    return Job(
        id=JobId(job_id),
        consumer=ConsumerPath(consumer),
        user="u",
        gpus_min=gpus,
        gpus_max=most or gpus,
        priority=prio,
        submit_seq=job_id,
        phase=JobPhase.PENDING,
    )


def run(
    job_id: int,
    consumer: str,
    held: str,
    *,
    least: int = 0,  # an elastic job's min (its max is `most`)
    most: int = 0,
    prio: int = 0,
    age: float = 600.0,  # seconds since it started
    anchor: str = "",  # an elastic job's first worker; default its first GPU
    releasing: str = "",
    stopping: bool = False,
    grace_left: float | None = None,
) -> Job:
    s = slots(held)
    elastic = bool(least or most)
    return Job(
        id=JobId(job_id),
        consumer=ConsumerPath(consumer),
        user="u",
        gpus_min=least or len(s),
        gpus_max=most or len(s),
        priority=prio,
        submit_seq=job_id,
        phase=JobPhase.RUNNING,
        held=s,
        started_at=NOW - age,
        anchor=(slots(anchor)[0] if anchor else s[0]) if elastic else None,
        releasing=slots(releasing) if releasing else (),
        stopping=stopping,
        release_deadline=None if grace_left is None else NOW + grace_left,
    )


@dataclass
class Case:
    nodes: list[Node]
    policy: Policy
    jobs: list[Job]
    # The whole plan: absent means none.
    started: dict[int, str] = field(default_factory=dict)  # job id -> its exact slots
    shrunk: dict[int, str] = field(default_factory=dict)  # job id -> the slots it gives
    grown: dict[int, str] = field(default_factory=dict)  # job id -> the slots it gets
    preempted: set[int] = field(default_factory=set)
    held: str = ""  # free GPUs held for a reclaim under way, as for slots()
    # Words the reasons must (or must not) carry.
    waiting_says: dict[int, list[str]] = field(default_factory=dict)
    waiting_never_says: dict[int, list[str]] = field(default_factory=dict)
    victim_says: dict[int, list[str]] = field(default_factory=dict)
    entitlement: dict[str, float] | None = None


def plan_of(case: Case, nodes: list[Node] | None = None, jobs: list[Job] | None = None) -> Plan:
    snap = Snapshot(nodes=tuple(nodes or case.nodes), jobs=tuple(jobs or case.jobs))
    return decide(snap, case.policy, NOW)


# --- the scenarios ----------------------------------------------------------

AB = tree(("/a", dict(owned=4)), ("/b", {}))  # /a owns 4: entitled to what it waits for

CASES = [
    # -- a. shrink elastic jobs above their min, newest-started first ----------
    pytest.param(
        Case(
            nodes=[node("n0", 8), node("n1")],
            policy=AB,
            jobs=[
                run(1, "/b", "n0:0-2", least=1, most=8, age=600),
                run(2, "/b", "n0:3-5", least=1, most=8, age=60),
                run(3, "/b", "n1:0-3"),
                pend(10, "/a", 4),
            ],
            entitlement={"/a": 4.0, "/b": 8.0},
            # n0 has 2 free: the newest elastic job gives the other 2 (not its anchor).
            shrunk={2: "n0:4-5"},
            held="n0:6-7",
            waiting_says={10: ["/a holds 0 of its entitlement 4.0", "reclaim from /b started"]},
            victim_says={
                2: [
                    "shrunk to give 4 GPU(s) to job 10 of /a",
                    "/a holds 0 of its entitlement 4.0",
                    "/b holds 10 of its entitlement 8.0",
                ]
            },
        ),
        id="shrink-newest-elastic-first-exactly-what-is-needed-where-the-job-fits",
    ),
    pytest.param(
        Case(
            nodes=[node("n0", 8), node("n1")],
            policy=AB,
            jobs=[
                run(1, "/b", "n0:0-2", least=1, most=8, age=600),
                run(2, "/b", "n0:3-5", least=1, most=8, age=60),
                run(3, "/b", "n1:0-3"),
                pend(10, "/a", 5),
            ],
            shrunk={2: "n0:4-5", 1: "n0:1"},
            held="n0:6-7",
        ),
        id="shrink-goes-on-to-the-next-newest-elastic-job",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=2)), ("/b", {})),
            jobs=[
                run(1, "/b", "n0:0-2", least=1, most=4, age=600),
                run(2, "/b", "n0:3", age=10),
                pend(10, "/a", 2),
            ],
            shrunk={1: "n0:1-2"},
        ),
        id="shrink-before-preempting-even-a-newer-rigid-job",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=2)), ("/b", dict(min_runtime_s=3600))),
            jobs=[run(1, "/b", "n0:0-3", least=1, most=4, age=5), pend(10, "/a", 2)],
            shrunk={1: "n0:1-2"},
        ),
        id="min-runtime-does-not-protect-from-a-shrink",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=3)), ("/b", {})),
            jobs=[run(1, "/b", "n0:0-3", least=1, most=4, anchor="n0:1"), pend(10, "/a", 3)],
            shrunk={1: "n0:0,n0:2-3"},
        ),
        id="the-anchor-gpu-is-never-shrunk",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=2)), ("/b", {})),
            jobs=[
                run(1, "/b", "n0:0-1", least=1, most=4, age=60),
                run(2, "/b", "n0:2-3", age=600),
                pend(10, "/a", 2),
            ],
            # Job 1 can give 1 GPU (its other one is its anchor); job 2's preemption
            # is needed anyway and gives both: the shrink would free one for nothing.
            preempted={2},
        ),
        id="no-shrink-when-the-preemption-it-needs-covers-the-need",
    ),
    # -- b. preempt: lowest priority, then newest-started, never too young ------
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=2)), ("/b", dict(min_runtime_s=30))),
            jobs=[
                run(1, "/b", "n0:0", age=600),
                run(2, "/b", "n0:1", age=60),
                run(3, "/b", "n0:2", prio=5, age=40),
                run(4, "/b", "n0:3", age=10),  # younger than its min_runtime
                pend(10, "/a", 1),
            ],
            preempted={2},
            waiting_says={10: ["reclaim from /b started"]},
            victim_says={
                2: [
                    "preempted to give 1 GPU(s) to job 10 of /a",
                    "/a holds 0 of its entitlement 1.0, /b holds 4 of its entitlement 3.0",
                ]
            },
        ),
        id="preempt-lowest-priority-then-newest-never-younger-than-min-runtime",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=2)), ("/b", dict(min_runtime_s=3600))),
            jobs=[
                run(1, "/b", "n0:0-1", age=300),
                run(2, "/b", "n0:2", age=600),
                run(3, "/b", "n0:3", age=60),
                pend(10, "/a", 2),
            ],
            waiting_never_says={10: ["reclaim"]},
        ),
        id="no-preemption-when-every-candidate-is-younger-than-min-runtime",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=AB,
            jobs=[run(1, "/b", "n0:0-3", prio=5), run(2, "/b", "n1:0-3"), pend(10, "/a", 1)],
            preempted={2},
        ),
        id="lowest-priority-first-across-nodes",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=AB,
            jobs=[
                run(1, "/b", "n0:0-3", age=60),
                run(2, "/b", "n1:0-3", age=30),
                pend(10, "/a", 1),
            ],
            preempted={2},
        ),
        id="newest-started-first-across-nodes",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/a", dict(owned=4)), ("/b", {}), ("/c", dict(owned=2))),
            jobs=[
                run(1, "/b", "n0:0-1", age=600),
                run(2, "/c", "n0:2"),
                run(3, "/b", "n0:3", age=300),
                run(4, "/b", "n1:0-1", age=200),
                run(5, "/c", "n1:2"),
                run(6, "/b", "n1:3", age=100),
                pend(10, "/a", 4, prio=1),
                pend(11, "/a", 4, prio=1),
                pend(12, "/a", 2),
            ],
            entitlement={"/a": 5.0, "/b": 1.0, "/c": 2.0},
            # No node can be emptied for a 4-GPU job (/c, at its entitlement, sits
            # on both): the 2-GPU job behind them gets its GPUs, from the newest
            # 2-GPU job (job 6 alone is too small, and spared).
            preempted={4},
            waiting_says={12: ["reclaim from /b started"]},
            waiting_never_says={10: ["reclaim"], 11: ["reclaim"]},
        ),
        id="jobs-reclaim-cannot-serve-do-not-hide-one-it-can",
    ),
    # -- take no more than needed ---------------------------------------------
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=2)), ("/b", {})),
            jobs=[
                run(1, "/b", "n0:0-1", age=60),
                run(2, "/b", "n0:2", age=300),
                run(3, "/b", "n0:3", age=600),
                pend(10, "/a", 2),
            ],
            preempted={1},
        ),
        id="one-preemption-when-one-suffices",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=2)), ("/b", {})),
            jobs=[
                run(1, "/b", "n0:0-1", age=300),
                run(2, "/b", "n0:2", age=600),
                run(3, "/b", "n0:3", age=60),
                pend(10, "/a", 2),
            ],
            # Newest first gives job 3 (1 GPU), then job 1 (2 GPUs): job 1 alone
            # is enough, so job 3 is left alone.
            preempted={1},
        ),
        id="a-victim-made-redundant-by-a-later-one-is-spared",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=2)), ("/b", {})),
            jobs=[
                run(1, "/b", "n0:0-1", stopping=True, grace_left=12),
                run(2, "/b", "n0:2", age=600),
                run(3, "/b", "n0:3", age=60),
                pend(10, "/a", 2),
            ],
            waiting_says={10: ["GPUs on their way back, grace ends in 12 s"]},
        ),
        id="no-victims-when-a-stopping-job-covers-the-need",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=2)), ("/b", {})),
            jobs=[
                run(1, "/b", "n0:0-2", least=1, most=4, releasing="n0:1-2", grace_left=7.4),
                run(3, "/b", "n0:3", age=60),
                pend(10, "/a", 2),
            ],
            waiting_says={10: ["GPUs on their way back, grace ends in 7 s"]},
        ),
        id="no-victims-when-gpus-being-released-cover-the-need",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=3)), ("/b", {})),
            jobs=[
                run(1, "/b", "n0:0-1", stopping=True, grace_left=20),
                run(2, "/b", "n0:2", age=60),
                pend(10, "/a", 3),
            ],
            # One more GPU is needed: the free one beside the two on their way back,
            # held; nobody is preempted.
            held="n0:3",
            waiting_says={10: ["GPUs on their way back, grace ends in 20 s"]},
        ),
        id="a-free-gpu-beside-gpus-on-their-way-back-is-held-not-a-victim",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/a", dict(owned=4)), ("/b", dict(owned=2)), ("/c", dict(owned=2))),
            jobs=[
                run(1, "/b", "n0:0-1", stopping=True, grace_left=20),
                run(2, "/b", "n0:2-3", age=60),
                run(3, "/c", "n1:0-1", age=600),
                run(4, "/c", "n1:2-3", age=300),
                pend(10, "/a", 2),
                pend(11, "/a", 2),
                pend(20, "/b", 2),
                pend(30, "/c", 2),
            ],
            # /b holds 4 of 2, but 2 are on their way back: it is at its entitlement.
            # /a's second job takes from /c, which really is above.
            preempted={4},
            waiting_says={
                10: ["grace ends in 20 s"],
                11: ["reclaim from /c started"],
            },
        ),
        id="gpus-on-their-way-back-count-as-gone-from-their-holder",
    ),
    # -- only when the move strictly reduces unfairness -------------------------
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1"), node("n2"), node("n3")],
            policy=tree(("/a", dict(owned=4, share=1)), ("/b", dict(owned=4, share=3)), ("/c", {})),
            jobs=[
                run(1, "/a", "n0:0-3"),
                run(2, "/a", "n1:0-2"),
                run(3, "/b", "n1:3"),
                run(4, "/b", "n2:0-3"),
                run(5, "/b", "n3:0-3"),
                pend(30, "/c", 4),
            ],
            entitlement={"/a": 5.6, "/b": 8.8, "/c": 1.6},
            # /c with 4 GPUs would be at 4/1.6 = 2.5, above /a (7/5.6) and /b (9/8.8).
            waiting_never_says={30: ["reclaim"]},
        ),
        id="no-preemption-when-the-receiver-would-end-further-above-than-the-victim",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1"), node("n2"), node("n3")],
            policy=tree(("/a", dict(owned=4, share=1)), ("/b", dict(owned=4, share=3)), ("/c", {})),
            jobs=[
                run(1, "/a", "n0:0-3"),
                run(2, "/a", "n1:0-2"),
                run(3, "/b", "n1:3", age=60),
                run(4, "/b", "n2:0-3"),
                run(5, "/b", "n3:0-3"),
                pend(30, "/c", 1),
                pend(31, "/c", 3),
            ],
            entitlement={"/a": 5.6, "/b": 8.8, "/c": 1.6},
            # With 1 GPU /c is at 0.6, below both: the newest job goes.
            preempted={3},
            victim_says={
                3: ["/c holds 0 of its entitlement 1.6, /b holds 9 of its entitlement 8.8"]
            },
        ),
        id="the-same-consumer-with-a-1-gpu-job-reclaims",
    ),
    # -- only GPUs owed: a whole GPU below the entitlement (floor) -----------------
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/a", {}), ("/b", {}), ("/c", {})),
            jobs=[
                run(1, "/a", "n0:0-1"),
                run(2, "/b", "n0:2-3", age=900),
                run(3, "/b", "n1:0", age=800),
                run(4, "/b", "n1:1", age=700),
                run(5, "/c", "n1:2-3"),
                pend(10, "/a", 1),
                pend(20, "/b", 1),
                pend(30, "/c", 1),
            ],
            entitlement={"/a": 2.67, "/b": 2.67, "/c": 2.67},
            # /a holds 2 of 2.67: it is not owed a whole GPU, and a third one it
            # would borrow (3 > 2.67). No preemption for it, though the move passes
            # every other rule (/a after, 3/2.67, below /b before, 4/2.67; /b after,
            # 3/2.67, above /a before, 2/2.67): it waits for GPUs that free up.
            waiting_never_says={10: ["reclaim"]},
        ),
        id="no-reclaim-for-a-consumer-short-of-its-entitlement-by-less-than-one-gpu",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/a", {}), ("/b", {}), ("/c", {})),
            jobs=[
                run(1, "/a", "n0:0"),
                run(2, "/b", "n0:1-3", age=900),
                run(3, "/b", "n1:0", age=800),
                run(4, "/b", "n1:1", age=700),
                run(5, "/c", "n1:2-3"),
                pend(10, "/a", 1),
                pend(11, "/a", 1),
                pend(20, "/b", 1),
                pend(30, "/c", 1),
            ],
            entitlement={"/a": 2.67, "/b": 2.67, "/c": 2.67},
            # /a holds 1 of 2.67, below floor(2.67) = 2: it reclaims one GPU (the
            # newest job of /b), and stops there: with 2 it is at its floor.
            preempted={4},
            victim_says={
                4: ["/a holds 1 of its entitlement 2.7, /b holds 5 of its entitlement 2.7"]
            },
        ),
        id="a-consumer-a-whole-gpu-short-reclaims-up-to-its-floor",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1"), node("n2"), node("n3")],
            policy=tree(("/a", {}), ("/b", {})),
            jobs=[
                run(1, "/a", "n0:0-3"),
                run(2, "/b", "n1:0-2"),
                run(3, "/b", "n2:0-2"),
                run(4, "/b", "n3:0-1"),
                pend(10, "/a", 4),
                pend(20, "/b", 4),
                pend(21, "/b", 4),
            ],
            entitlement={"/a": 8.0, "/b": 8.0},
            # No reclaim; n3 (2 free, the most) is reserved for /a's 4-GPU job instead.
            waiting_says={10: ["2 GPUs free, at most 1 on one node", "reservation on n3"]},
            waiting_never_says={10: ["reclaim"]},
            held="n3:2-3",
        ),
        id="never-takes-from-a-consumer-at-its-entitlement",
    ),
    pytest.param(
        Case(
            nodes=[node("n0", 8)],
            policy=tree(("/a", dict(share=5)), ("/b", dict(share=3))),
            jobs=[
                run(1, "/a", "n0:0-1"),
                run(2, "/a", "n0:2-3"),
                run(3, "/b", "n0:4-5"),
                run(4, "/b", "n0:6-7"),
                pend(10, "/a", 2),
                pend(20, "/b", 2),
            ],
            entitlement={"/a": 5.0, "/b": 3.0},
            # /a after (6/5) would be below /b before (4/3), but /b after (2/3) would
            # be more starved than /a before (4/5): admission would give the GPUs
            # back to /b as soon as they are free, and /a would preempt again.
            waiting_never_says={10: ["reclaim"]},
        ),
        id="no-preemption-that-admission-would-undo-no-preemption-loop",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1"), node("n2", 1)],
            policy=tree(
                ("/p", {}), ("/p/x", {}), ("/p/y", {}), ("/q", {}), ("/q/z", {}), ("/q/w", {})
            ),
            jobs=[
                run(1, "/q/z", "n0:0"),
                run(2, "/q/z", "n0:1-2"),
                run(3, "/q/w", "n0:3", least=1, most=4),
                run(4, "/p/y", "n1:0-1"),
                run(5, "/p/y", "n1:2-3"),
                run(6, "/p/x", "n2:0"),
                pend(10, "/p/x", 1),
            ],
            entitlement={"/p": 4.5, "/q": 4.5, "/p/x": 2.0, "/p/y": 2.5, "/q/z": 2.25},
            # /q/z is above its own entitlement, but /q is below its own: the GPU
            # comes from /p/x's sibling, not from the other group.
            preempted={4},
            victim_says={4: ["to job 10 of /p/x", "/p/y holds 4 of its entitlement 2.5"]},
        ),
        id="a-group-below-its-entitlement-is-not-taken-from",
    ),
    # -- held GPUs and free GPUs --------------------------------------------------
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(owned=4)), ("/b", dict(share=0)), ("/c", dict(share=0))),
            jobs=[
                run(1, "/b", "n0:0-1"),
                pend(10, "/a", 4),
                pend(30, "/c", 1),
                pend(31, "/c", 2),
            ],
            preempted={1},
            held="n0:2-3",
            waiting_says={30: ["no GPU is free"], 31: ["no GPU is free"]},
        ),
        id="borrowers-cannot-take-held-gpus-in-the-same-cycle",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=AB,
            jobs=[run(1, "/b", "n0:0-3", least=1, most=4), pend(10, "/a", 4)],
            started={10: "n1:0-3"},
        ),
        id="a-job-servable-from-free-gpus-is-started-not-reclaimed-for",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/a", dict(owned=4)), ("/b", {})),
            jobs=[
                run(1, "/b", "n0:0", stopping=True, grace_left=10),
                run(2, "/b", "n0:1-3"),
                run(3, "/b", "n1:0-1"),
                pend(10, "/a", 2),
            ],
            # n0 would serve it with the GPU on its way back, but n1 has 2 free now.
            started={10: "n1:2-3"},
        ),
        id="free-gpus-elsewhere-mean-no-hold",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1"), node("n2")],
            policy=tree(("/p", dict(share=1)), ("/p/a", {}), ("/p/b", {}), ("/q", dict(share=3))),
            jobs=[
                run(1, "/p/b", "n0:0", stopping=True, grace_left=10),
                run(2, "/q", "n0:1-2"),
                run(3, "/p/b", "n1:0-1"),
                run(4, "/p/a", "n2:0"),
                run(5, "/q", "n2:1-3"),
                pend(10, "/p/a", 2),
                pend(20, "/q", 8),
                pend(21, "/q", 8),
            ],
            entitlement={"/p": 3.0, "/q": 9.0, "/p/a": 1.5, "/p/b": 1.5},
            # /p is above its entitlement, so /p/a (below its own) could be served only
            # by the borrowing pass. But reclaim found nothing to take for /q's 8-GPU job
            # (below its entitlement): it gets a reservation on n1 and n0 (reservation.py,
            # after reclaim), whose free GPUs the borrowing pass may not take.
            started={},
            held="n1:2-3,n0:3",
            waiting_says={20: ["holds a reservation on n1, n0: 3 of its 8 GPUs"]},
        ),
        id="a-reservation-after-a-reclaim-that-found-nothing-keeps-borrowers-off",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/a", dict(owned=4)), ("/b", {}), ("/c", {})),
            jobs=[
                run(1, "/b", "n0:0-1", stopping=True, grace_left=10),
                run(2, "/b", "n1:1-3"),
                run(3, "/c", "n1:0"),
                pend(10, "/a", 4),
                pend(20, "/c", 2),
            ],
            entitlement={"/a": 4.0, "/b": 2.0, "/c": 2.0},
            # The 2 free GPUs of n0 and the 2 on their way back make /a's 4: /c,
            # less starved, does not get the free ones first (else /a would reclaim
            # again when the others are back).
            held="n0:2-3",
            waiting_says={10: ["grace ends in 10 s"]},
        ),
        id="free-gpus-beside-gpus-on-their-way-back-are-held-before-admission",
    ),
    # -- step 5: priority preemption inside a consumer ---------------------------
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(priority_preemption=True))),
            jobs=[
                run(1, "/a", "n0:0-1", age=600),
                run(2, "/a", "n0:2", prio=3, age=60),
                run(3, "/a", "n0:3", age=300),
                pend(10, "/a", 1, prio=5),
            ],
            preempted={3},
            victim_says={
                3: ["preempted for job 10 of /a, priority 5 above its 0 (priority preemption)"]
            },
        ),
        id="priority-preemption-lowest-priority-newest-first",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", {})),
            jobs=[
                run(1, "/a", "n0:0-1", age=600),
                run(2, "/a", "n0:2", prio=3, age=60),
                run(3, "/a", "n0:3", age=300),
                pend(10, "/a", 1, prio=5),
            ],
        ),
        id="no-priority-preemption-without-the-policy",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(priority_preemption=True))),
            jobs=[run(1, "/a", "n0:0-3", prio=5), pend(10, "/a", 1, prio=5)],
        ),
        id="no-priority-preemption-of-an-equal-priority",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/a", dict(priority_preemption=True, limit=4))),
            jobs=[
                run(1, "/a", "n0:0-1", age=600),
                run(2, "/a", "n0:2", prio=3, age=60),
                run(3, "/a", "n0:3", age=300),
                pend(10, "/a", 1, prio=5),
            ],
            # n1 is free, but /a is at its limit: the preempted job makes room.
            preempted={3},
            waiting_says={10: ["/a holds 4 of its limit 4"]},
        ),
        id="priority-preemption-at-the-consumers-limit",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/p", dict(limit=4)), ("/p/x", {}), ("/p/y", {}), ("/q", {})),
            jobs=[
                run(1, "/p/y", "n0:0-1", age=600),
                run(2, "/p/y", "n0:2-3", age=60),
                run(5, "/q", "n1:0-3"),
                pend(10, "/p/x", 2),
                pend(11, "/q", 2),
            ],
            entitlement={"/p": 4.0, "/p/x": 2.0, "/p/y": 2.0, "/q": 4.0},
            # /p is at its limit, but the GPUs come from inside /p.
            preempted={2},
        ),
        id="reclaim-from-a-sibling-under-a-parent-at-its-limit",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/a", dict(priority_preemption=True)), ("/c", dict(share=0))),
            jobs=[
                run(1, "/a", "n0:0-2"),
                run(2, "/a", "n1:1-3"),
                pend(10, "/a", 4, prio=5),
                pend(30, "/c", 1),
            ],
            # n0's free GPU goes to /c (work conservation) before step 5: there job
            # 1's 3 GPUs alone cannot make job 10's 4; on n1 job 2's can.
            started={30: "n0:3"},
            preempted={2},
            held="n1:0",
        ),
        id="priority-preemption-counts-only-gpus-still-free-after-borrowing",
    ),
    # -- growth (work conservation) ------------------------------------------------
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/a", {})),
            jobs=[run(1, "/a", "n0:0-1", least=1, most=4), run(2, "/a", "n1:0")],
            grown={1: "n0:2-3"},
        ),
        id="idle-gpus-grow-an-elastic-job-to-its-max-next-to-its-workers",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/a", {})),
            jobs=[
                run(1, "/a", "n0:0-1", least=1, most=4, stopping=True, grace_left=5),
                run(2, "/a", "n1:0-1", least=1, most=4, releasing="n1:1", grace_left=5),
            ],
        ),
        id="no-growth-for-a-job-stopping-or-releasing",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1")],
            policy=tree(("/a", dict(owned=4)), ("/b", dict(share=0)), ("/c", {})),
            jobs=[
                run(1, "/b", "n0:0-1"),
                run(2, "/c", "n1:0-3", least=4, most=8),
                pend(10, "/a", 4),
            ],
            preempted={1},
            held="n0:2-3",
        ),
        id="no-growth-into-held-gpus",
    ),
]


# --- checks -----------------------------------------------------------------


def check_any_plan(case: Case, plan: Plan) -> None:
    """What holds for every plan (SEMANTICS: the cycle, steps 4-6; invariants)."""
    jobs = {j.id: j for j in case.jobs}
    policy = case.policy
    held = {s for j in case.jobs for s in j.held}
    given = [s for x in plan.starts for s in x.slots] + [s for g in plan.grows for s in g.slots]
    assert len(given) == len(set(given)) and not set(given) & held, "a GPU given twice"
    assert len(plan.held) == len(set(plan.held))
    assert not set(plan.held) & (held | set(given)), "a held GPU is not free, or given"
    victims = [p.job_id for p in plan.preemptions] + [s.job_id for s in plan.shrinks]
    assert len(victims) == len(set(victims)), "a job is a victim twice"
    for p in plan.preemptions:
        job = jobs[p.job_id]
        assert job.phase is JobPhase.RUNNING and not job.stopping and p.reason
        assert job.started_at is not None
        assert NOW - job.started_at >= policy.consumers[job.consumer].min_runtime_s
    for sh in plan.shrinks:
        job = jobs[sh.job_id]
        assert job.elastic and not job.stopping and sh.reason
        assert set(sh.slots) <= set(job.held) - set(job.releasing)
        assert job.anchor not in sh.slots
        assert len(job.held) - len(job.releasing) - len(sh.slots) >= job.gpus_min
    for g in plan.grows:
        job = jobs[g.job_id]
        assert job.elastic and not job.stopping and not job.releasing and g.reason
        assert len(job.held) + len(g.slots) <= job.gpus_max
    started = {s.job_id for s in plan.starts}
    waiting = {j.id for j in case.jobs if j.phase is JobPhase.PENDING} - started
    assert set(plan.pending_reasons) == waiting
    assert all(plan.pending_reasons[i].strip() for i in waiting)
    if plan.held:  # held only while a reclaim is under way for a waiting job, or for its
        # reservation (core/reservation.py)
        assert any(
            "reclaim from" in r or "way back" in r or "reservation on" in r
            for r in plan.pending_reasons.values()
        )


@pytest.mark.parametrize("case", CASES)
def test_reclaim(case: Case) -> None:
    plan = plan_of(case)
    check_any_plan(case, plan)
    assert {int(s.job_id): s.slots for s in plan.starts} == {
        k: slots(v) for k, v in case.started.items()
    }
    assert {int(s.job_id): s.slots for s in plan.shrinks} == {
        k: slots(v) for k, v in case.shrunk.items()
    }
    assert {int(g.job_id): g.slots for g in plan.grows} == {
        k: slots(v) for k, v in case.grown.items()
    }
    assert {int(p.job_id) for p in plan.preemptions} == case.preempted
    assert set(plan.held) == set(slots(case.held) if case.held else ())
    if case.entitlement is not None:
        got = {p: plan.consumers[ConsumerPath(p)].entitlement for p in case.entitlement}
        assert got == pytest.approx(case.entitlement, abs=0.01)
    for job_id, phrases in case.waiting_says.items():
        for phrase in phrases:
            assert phrase in plan.pending_reasons[JobId(job_id)]
    for job_id, phrases in case.waiting_never_says.items():
        for phrase in phrases:
            assert phrase not in plan.pending_reasons[JobId(job_id)]
    reasons = {int(v.job_id): v.reason for v in plan.preemptions}
    reasons.update({int(v.job_id): v.reason for v in plan.shrinks})
    for job_id, phrases in case.victim_says.items():
        for phrase in phrases:
            assert phrase in reasons[job_id]


@pytest.mark.parametrize("case", CASES)
def test_reclaim_is_deterministic(case: Case) -> None:
    """Same input, same plan; the order of nodes and jobs in the snapshot is no input."""
    first = plan_of(case)
    assert plan_of(case) == first
    assert plan_of(case, list(reversed(case.nodes)), list(reversed(case.jobs))) == first


def test_a_reclaim_completes_across_cycles() -> None:
    """Reclaim with grace, cycle after cycle: the victim is told (preempted) and keeps
    its GPUs through its grace while the receiver waits with a reason; once they are
    free the receiver starts on them, and nothing more is taken."""
    policy = tree(("/a", dict(owned=4)), ("/b", dict(grace_s=30)))
    nodes = (node("n0"),)
    old = run(1, "/b", "n0:0-1", age=600)

    def cycle(now: float, *jobs: Job) -> Plan:
        return decide(Snapshot(nodes, (old, *jobs, pend(10, "/a", 2))), policy, now)

    # Cycle 1: the newest job of /b is preempted; /a's job waits, saying why.
    plan = cycle(NOW, run(2, "/b", "n0:2-3", age=60))
    assert [int(p.job_id) for p in plan.preemptions] == [2]
    assert not plan.shrinks and not plan.starts and not plan.held
    assert "reclaim from /b started" in plan.pending_reasons[JobId(10)]
    # Cycle 2: job 2 is stopping, its grace running: nothing new is taken.
    plan = cycle(NOW + 5, run(2, "/b", "n0:2-3", age=65, stopping=True, grace_left=30))
    assert not plan.preemptions and not plan.shrinks and not plan.starts
    assert "GPUs on their way back, grace ends in 25 s" in plan.pending_reasons[JobId(10)]
    # Cycle 3: job 2 is back in the queue, its GPUs free: /a's job starts on them,
    # and /b, at its entitlement, takes nothing back.
    plan = cycle(NOW + 30, pend(2, "/b", 2))
    assert {int(s.job_id): s.slots for s in plan.starts} == {10: slots("n0:2-3")}
    assert not plan.preemptions and not plan.shrinks and not plan.held
