"""Scenarios for `decide(snapshot, policy, now)` (SEMANTICS: "The cycle").

Each case is a small cluster, a consumer tree and a queue, with the exact plan the
rules give. Every case also goes through the checks that hold for any plan (no GPU
given twice, only free GPUs of schedulable nodes, a reason for every waiting job,
the same plan for the same input in any order).
"""

from __future__ import annotations

from collections import Counter
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
    Order,
    Plan,
    Policy,
    Snapshot,
    decide,
)

NOW = 1_000.0


# --- builders ---------------------------------------------------------------


def slots(*specs: str) -> tuple[GpuSlot, ...]:
    """ "n0:0-3" is GPUs 0..3 of n0; "n1:2" is one GPU."""
    out = []
    for spec in specs:
        for part in spec.split(","):
            name, _, idx = part.partition(":")
            lo, _, hi = idx.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                out.append(GpuSlot(NodeName(name), i))
    return tuple(out)


def node(name: str, gpus: int = 4, schedulable: bool = True) -> Node:
    return Node(NodeName(name), tuple(range(gpus)), schedulable)


def pend(
    job_id: int, consumer: str, gpus: int = 1, *, prio: int = 0, user: str = "u", seq: int = 0
) -> Job:
    return Job(
        id=JobId(job_id),
        consumer=ConsumerPath(consumer),
        user=user,
        gpus_min=gpus,
        gpus_max=gpus,
        priority=prio,
        submit_seq=seq or job_id,
        phase=JobPhase.PENDING,
    )


def run(job_id: int, consumer: str, *held: str, user: str = "u") -> Job:
    s = slots(*held)
    return Job(
        id=JobId(job_id),
        consumer=ConsumerPath(consumer),
        user=user,
        gpus_min=len(s),
        gpus_max=len(s),
        priority=0,
        submit_seq=job_id,
        phase=JobPhase.RUNNING,
        held=s,
        started_at=NOW - 60,
    )


def backlog(consumer: str, first_id: int, count: int, gpus: int = 1) -> list[Job]:
    return [pend(first_id + i, consumer, gpus) for i in range(count)]


def tree(*specs: tuple[str, dict[str, Any]]) -> Policy:
    consumers = {ROOT: ConsumerPolicy(ROOT)}
    for path, fields in specs:
        consumers[ConsumerPath(path)] = ConsumerPolicy(ConsumerPath(path), **fields)
    return Policy(consumers=consumers)


@dataclass
class Case:
    nodes: list[Node]
    policy: Policy
    jobs: list[Job]
    usage: dict[tuple[str, str], float] = field(default_factory=dict)
    # Expectations; None means "not checked by this case".
    started: set[int] | None = None  # exactly these job ids start
    gpus_started: dict[str, int] | None = None  # GPUs started per leaf (absent: 0)
    placed: dict[int, str] | None = None  # job id -> its exact slots, as for slots()
    entitlement: dict[str, float] | None = None
    allocation: dict[str, int] | None = None
    waiting_says: dict[int, list[str]] = field(default_factory=dict)
    start_says: dict[int, list[str]] = field(default_factory=dict)


def plan_of(case: Case) -> Plan:
    snap = Snapshot(
        nodes=tuple(case.nodes),
        jobs=tuple(case.jobs),
        user_usage={(ConsumerPath(c), u): v for (c, u), v in case.usage.items()},
    )
    return decide(snap, case.policy, NOW)


# --- the scenarios ----------------------------------------------------------

TWO_BY_FOUR = [node("n0"), node("n1")]

CASES = [
    pytest.param(
        Case(
            nodes=TWO_BY_FOUR,
            policy=tree(("/a", dict(share=1)), ("/b", dict(share=3))),
            jobs=backlog("/a", 100, 20) + backlog("/b", 200, 20),
            gpus_started={"/a": 2, "/b": 6},
            entitlement={"/a": 2.0, "/b": 6.0},
        ),
        id="shares-1-to-3-split-8-gpus-2-and-6",
    ),
    pytest.param(
        Case(
            nodes=TWO_BY_FOUR,
            policy=tree(("/a", dict(owned=4)), ("/b", {}), ("/c", {})),
            jobs=[
                *(run(i, "/b", f"n0:{i - 1}") for i in range(1, 5)),
                *(run(i, "/c", f"n1:{i - 5}") for i in range(5, 8)),
                pend(10, "/b"),
                pend(11, "/b"),
                pend(12, "/c"),
                pend(20, "/a"),
                pend(21, "/a"),
            ],
            # /a: owned 4 capped by demand 2; the other 6 split 1:1.
            entitlement={"/a": 2.0, "/b": 3.0, "/c": 3.0},
            started={20},
            placed={20: "n1:3"},
            waiting_says={21: ["/a holds 1 of its entitlement 2.0", "no GPU is free"]},
            start_says={20: ["/a held 0 of its entitlement 2.0, within its entitlement"]},
        ),
        id="owner-submitting-late-gets-the-next-free-gpu",
    ),
    pytest.param(
        Case(
            nodes=TWO_BY_FOUR,
            policy=tree(("/a", dict(owned=4)), ("/b", dict(owned=4)), ("/c", {})),
            jobs=[
                run(1, "/a", "n0:0"),
                run(2, "/a", "n0:1"),
                run(3, "/b", "n0:2"),
                run(4, "/c", "n1:0-3"),
                pend(10, "/a"),
                pend(11, "/a"),
                pend(12, "/b"),
                pend(13, "/b"),
                pend(15, "/b"),
                pend(14, "/c"),
            ],
            entitlement={"/a": 4.0, "/b": 4.0, "/c": 0.0},
            # /a holds 2 of 4, /b 1 of 4: /b is the most starved.
            started={12},
            placed={12: "n0:3"},
        ),
        id="most-starved-first",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", {}), ("/b", {})),
            jobs=[run(1, "/b", "n0:0"), pend(10, "/a", 4)],
            started=set(),
            waiting_says={
                10: ["waiting for 4 GPUs on one node", "3 GPUs free, at most 3 on one node"]
            },
        ),
        id="gang-a-4-gpu-job-never-starts-on-3",
    ),
    pytest.param(
        Case(
            nodes=[node("n0", 8), node("n1", 8)],
            policy=tree(("/a", {}), ("/b", {})),
            jobs=[run(1, "/b", "n0:0-4"), run(2, "/b", "n1:0-4"), pend(10, "/a", 4)],
            started=set(),
            # It is /a's first job and fits no node: n0 (3 free) is reserved for it.
            waiting_says={10: ["3 GPUs free, at most 3 on one node", "reservation on n0"]},
        ),
        id="a-job-that-fits-one-node-is-never-split",
    ),
    pytest.param(
        Case(
            nodes=[node("n0", 8), node("n1", 8)],
            policy=tree(("/a", {}), ("/b", {})),
            jobs=[run(1, "/b", "n0:0-3"), run(2, "/b", "n1:0-3"), pend(10, "/a", 8)],
            started=set(),
        ),
        id="a-node-sized-job-is-not-split-over-two-half-nodes",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1"), node("n2")],
            policy=tree(("/a", {}), ("/b", {})),
            jobs=[run(1, "/b", "n1:0-1"), run(2, "/b", "n2:0"), pend(10, "/a", 2)],
            started={10},
            placed={10: "n1:2-3"},  # 2 free on n1 < 3 on n2 < 4 on n0
        ),
        id="best-fit-fewest-free-gpus-that-fit",
    ),
    pytest.param(
        Case(
            nodes=[node("n0", 8), node("n1", 8), node("n2", 8)],
            policy=tree(("/a", {}), ("/b", {})),
            jobs=[run(1, "/b", "n1:0-3"), pend(10, "/a", 12)],
            started={10},
            placed={10: "n0:0-7,n1:4-7"},  # a whole node, then best fit; n2 stays whole
        ),
        id="a-12-gpu-job-spans-a-whole-node-then-best-fit",
    ),
    pytest.param(
        Case(
            nodes=TWO_BY_FOUR,
            policy=tree(("/a", dict(limit=3)), ("/b", {})),
            jobs=backlog("/a", 100, 5),
            gpus_started={"/a": 3},
            allocation={"/a": 3, "/": 3},
            waiting_says={103: ["waiting for 1 GPU: /a holds 3 of its limit 3"]},
        ),
        id="limit-respected-and-named",
    ),
    pytest.param(
        Case(
            nodes=TWO_BY_FOUR,
            policy=tree(("/p", dict(limit=3)), ("/p/a", {}), ("/p/b", {}), ("/q", {})),
            jobs=backlog("/p/a", 100, 4) + backlog("/p/b", 200, 4),
            gpus_started={"/p/a": 2, "/p/b": 1},
            allocation={"/p": 3},
            waiting_says={
                102: ["/p holds 3 of its limit 3"],
                201: ["/p holds 3 of its limit 3"],
            },
        ),
        id="parent-limit-respected-and-named",
    ),
    pytest.param(
        Case(
            nodes=TWO_BY_FOUR,
            policy=tree(("/a", dict(owned=2, share=0, borrow=False)), ("/b", {})),
            jobs=[*backlog("/a", 100, 4), pend(200, "/b")],
            gpus_started={"/a": 2, "/b": 1},
            waiting_says={
                102: ["/a holds 2 of its entitlement 2.0 and may not borrow (borrow: false)"]
            },
        ),
        id="borrow-false-stops-at-entitlement-gpus-idle",
    ),
    pytest.param(
        Case(
            nodes=[node("n0", 8), node("n1", 8)],
            policy=tree(
                ("/a", dict(owned=4, share=1, borrow=False)),
                ("/b", dict(owned=4, share=3)),
                ("/c", {}),
            ),
            jobs=backlog("/a", 100, 20) + backlog("/b", 200, 20) + backlog("/c", 300, 20),
            entitlement={"/a": 5.6, "/b": 8.8, "/c": 1.6},
            # /a stops at 5 (6 > 5.6); the others share the rest most-starved first.
            gpus_started={"/a": 5, "/b": 9, "/c": 2},
            waiting_says={105: ["may not borrow"]},
        ),
        id="borrow-false-stops-below-a-fractional-entitlement",
    ),
    pytest.param(
        Case(
            nodes=TWO_BY_FOUR,
            policy=tree(("/a", dict(owned=6)), ("/b", dict(share=0))),
            jobs=backlog("/b", 100, 10),
            entitlement={"/a": 0.0, "/b": 0.0},
            gpus_started={"/b": 8},
            start_says={100: ["borrowing idle GPUs (work conservation)"]},
        ),
        id="work-conservation-idle-gpus-go-to-a-borrower",
    ),
    pytest.param(
        Case(
            nodes=TWO_BY_FOUR,
            policy=tree(("/a", dict(owned=6)), ("/b", {}), ("/c", {})),
            jobs=[
                run(1, "/c", "n0:0"),
                run(2, "/c", "n1:0"),
                pend(10, "/a", 4),
                *backlog("/b", 100, 10),
            ],
            # /a is entitled to 4 but its gang fits no node, and nobody borrows what
            # reclaim could take: n0's 3 free GPUs are held for it (a reservation), and
            # /b borrows the other 3. Without it /b's backlog would fill every GPU that
            # frees up, and the 4-GPU job would never start.
            entitlement={"/a": 4.0, "/b": 2.0, "/c": 2.0},
            gpus_started={"/b": 3},
            waiting_says={10: ["/a holds 0 of its entitlement 4.0", "reservation on n0"]},
            start_says={102: ["borrowing idle GPUs"]},
        ),
        id="work-conservation-borrows-what-a-reservation-leaves",
    ),
    pytest.param(
        Case(
            nodes=TWO_BY_FOUR,
            policy=tree(("/a", dict(owned=4, lend=False)), ("/b", {})),
            jobs=[run(1, "/a", "n0:0"), *backlog("/b", 100, 10)],
            gpus_started={"/b": 4},  # 8 - 1 held - 3 reserved
            waiting_says={104: ["reserved (lend: false): 3 for /a"]},
        ),
        id="reserved-gpus-of-lend-false-stay-idle",
    ),
    pytest.param(
        Case(
            nodes=[node("n0", 2)],
            policy=tree(("/a", dict(order=Order.PRIORITY))),
            jobs=[pend(1, "/a", prio=0), pend(2, "/a", prio=5), pend(3, "/a", prio=5)],
            started={2, 3},
            waiting_says={1: ["(1st of 1 waiting in /a)"]},
        ),
        id="order-priority-then-submit-time",
    ),
    pytest.param(
        Case(
            nodes=[node("n0", 2)],
            policy=tree(("/a", dict(order=Order.FIFO))),
            jobs=[pend(1, "/a", prio=0), pend(2, "/a", prio=5), pend(3, "/a", prio=5)],
            started={1, 2},
        ),
        id="order-fifo-ignores-priority",
    ),
    pytest.param(
        Case(
            nodes=[node("n0", 2)],
            policy=tree(("/a", dict(order=Order.FAIRSHARE))),
            jobs=[
                pend(1, "/a", user="alice"),
                pend(2, "/a", user="alice"),
                pend(3, "/a", user="bob"),
                pend(4, "/a", user="bob"),
            ],
            usage={("/a", "alice"): 1000.0, ("/a", "bob"): 0.0},
            started={3, 1},  # bob (less usage) first, then users take turns
            waiting_says={4: ["(1st of 2 waiting in /a)"], 2: ["(2nd of 2 waiting in /a)"]},
        ),
        id="order-fairshare-least-usage-first-then-turns",
    ),
    pytest.param(
        Case(
            nodes=[node("n0", 2)],
            policy=tree(("/a", dict(order=Order.FAIRSHARE))),
            jobs=[
                run(9, "/a", "n0:0", user="alice"),
                pend(1, "/a", user="alice"),
                pend(2, "/a", user="bob"),
            ],
            started={2},
        ),
        id="order-fairshare-counts-running-gpus",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", dict(order=Order.FIFO)), ("/b", {})),
            jobs=[run(9, "/b", "n0:0-1"), pend(1, "/a", 4), pend(2, "/a"), pend(3, "/a")],
            started={2, 3},
            waiting_says={1: ["waiting for 4 GPUs"]},
        ),
        id="backfill-small-jobs-pass-a-blocked-large-one",
    ),
    pytest.param(
        Case(
            nodes=[node("n0")],
            policy=tree(("/a", {}), ("/p", {}), ("/p/x", {})),
            jobs=[
                run(9, "/ghost", "n0:0-1"),
                pend(1, "/ghost"),
                pend(4, "/p"),
                pend(2, "/a", 2),
                pend(3, "/a"),
            ],
            started={2},
            placed={2: "n0:2-3"},
            allocation={"/": 4, "/a": 2},
            waiting_says={
                1: ["consumer /ghost is not a leaf of the policy in force"],
                4: ["consumer /p is not a leaf of the policy in force"],
            },
        ),
        id="jobs-of-an-unknown-or-parent-consumer-wait-with-a-reason",
    ),
    pytest.param(
        Case(
            nodes=[node("n0"), node("n1", schedulable=False)],
            policy=tree(("/a", {}), ("/b", {})),
            jobs=[run(9, "/a", "n1:0-1"), *backlog("/a", 100, 10), *backlog("/b", 200, 10)],
            # Capacity 4 schedulable + 2 held on the drained node: 3 each.
            entitlement={"/": 6.0, "/a": 3.0, "/b": 3.0},
            gpus_started={"/a": 1, "/b": 3},
            allocation={"/a": 3, "/b": 3},
        ),
        id="drained-node-gets-nothing-new-but-its-held-gpus-count",
    ),
    pytest.param(
        Case(
            nodes=[node("n0", schedulable=False)],
            policy=tree(("/a", {})),
            jobs=[pend(1, "/a", 2)],
            started=set(),
            waiting_says={1: ["only 0 GPUs are schedulable now"]},
        ),
        id="nothing-lands-on-an-unschedulable-node",
    ),
    pytest.param(
        Case(
            nodes=TWO_BY_FOUR,
            policy=tree(("/a", {})),
            jobs=[run(1, "/a", "n0:0")],
            started=set(),
            allocation={"/a": 1},
        ),
        id="nothing-waiting-an-empty-plan",
    ),
    pytest.param(
        Case(
            nodes=TWO_BY_FOUR,
            policy=tree(("/a", {})),
            jobs=[pend(1, "/gone", 2)],
            started=set(),
            waiting_says={1: ["consumer /gone is not a leaf of the policy in force"]},
        ),
        id="only-jobs-of-unknown-consumers-wait",
    ),
]


# --- checks -----------------------------------------------------------------


def check_any_plan(case: Case, plan: Plan) -> None:
    """What holds for every plan (SEMANTICS: invariants)."""
    jobs = {j.id: j for j in case.jobs}
    schedulable = {n.name: set(n.gpus) for n in case.nodes if n.schedulable}
    held = {s for j in case.jobs for s in j.held}
    given: list[GpuSlot] = [s for st in plan.starts for s in st.slots]
    assert len(given) == len(set(given)), "a GPU given twice"
    assert not set(given) & held, "a held GPU given again"
    for st in plan.starts:
        job = jobs[st.job_id]
        assert job.phase is JobPhase.PENDING
        assert len(st.slots) == job.gpus, "gang: exactly its GPUs"
        assert all(s.index in schedulable.get(s.node, ()) for s in st.slots)
        assert st.reason
    started = {st.job_id for st in plan.starts}
    waiting = {j.id for j in case.jobs if j.phase is JobPhase.PENDING} - started
    assert set(plan.pending_reasons) == waiting
    assert all(plan.pending_reasons[i] for i in waiting)


@pytest.mark.parametrize("case", CASES)
def test_decide(case: Case) -> None:
    plan = plan_of(case)
    check_any_plan(case, plan)
    jobs = {j.id: j for j in case.jobs}
    started = {int(st.job_id) for st in plan.starts}
    if case.started is not None:
        assert started == case.started
    if case.gpus_started is not None:
        per: Counter[str] = Counter()
        for st in plan.starts:
            per[jobs[st.job_id].consumer] += len(st.slots)
        assert dict(per) == case.gpus_started
    if case.placed is not None:
        by_id = {int(st.job_id): st.slots for st in plan.starts}
        for job_id, spec in case.placed.items():
            assert by_id[job_id] == slots(spec)
    if case.entitlement is not None:
        got = {p: plan.consumers[ConsumerPath(p)].entitlement for p in case.entitlement}
        assert got == pytest.approx(case.entitlement, abs=1e-9)
    if case.allocation is not None:
        got_alloc = {p: plan.consumers[ConsumerPath(p)].allocation for p in case.allocation}
        assert got_alloc == case.allocation
    for job_id, phrases in case.waiting_says.items():
        reason = plan.pending_reasons[JobId(job_id)]
        for phrase in phrases:
            assert phrase in reason
    start_reasons = {int(st.job_id): st.reason for st in plan.starts}
    for job_id, phrases in case.start_says.items():
        for phrase in phrases:
            assert phrase in start_reasons[job_id]


@pytest.mark.parametrize("case", CASES)
def test_decide_is_deterministic(case: Case) -> None:
    """Same input, same plan; the order of nodes and jobs in the snapshot is no input."""
    first = plan_of(case)
    assert plan_of(case) == first
    shuffled = Case(
        nodes=list(reversed(case.nodes)),
        policy=case.policy,
        jobs=list(reversed(case.jobs)),
        usage=case.usage,
    )
    assert plan_of(shuffled) == first


def test_consumer_states_count_jobs_and_starts() -> None:
    case = Case(
        nodes=[node("n0", 2)],
        policy=tree(("/p", {}), ("/p/a", {}), ("/q", {})),
        jobs=[run(1, "/p/a", "n0:0"), pend(2, "/p/a"), pend(3, "/p/a"), pend(4, "/q", 2)],
    )
    plan = plan_of(case)
    states = plan.consumers
    assert set(states) == {ROOT, "/p", "/p/a", "/q"}
    assert states[ConsumerPath("/p/a")].running_jobs == 2  # one ran, one started
    assert states[ConsumerPath("/p/a")].pending_jobs == 1
    assert states[ConsumerPath("/p")].allocation == 2
    assert states[ConsumerPath("/q")].pending_jobs == 1
    assert states[ConsumerPath("/q")].demand == 2
    assert states[ROOT].demand == 5
