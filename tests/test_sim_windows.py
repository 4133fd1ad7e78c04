"""Time-based plans in the simulator (issue 13 item 5): the engine's decide() reads the
policy's windows on the virtual clock, and a cycle runs at each boundary, so a window
that starts or ends changes entitlements and reclaims with nothing else happening.

The virtual clock is read as unix time (core/windows.py): second 0 of a workload that
starts at 0 is 1970-01-01 00:00 UTC, a Thursday."""

from __future__ import annotations

from schedulerd.core import ConsumerPath, Plan
from schedulerd.policy import load_policy
from schedulerd.sim.engine import Engine, SimConfig
from schedulerd.sim.schedulers import FairShare
from schedulerd.sim.setup import ClusterSpec
from schedulerd.sim.workload import SimJob, Workload

HOUR = 3600.0

# /a and /b own 4 each of 8 GPUs; on Thursdays 01:00-02:00 /a owns all 8, /b none.
POLICY = """\
version: 1
timezone: UTC
defaults: {grace: 30s}
consumers:
  a:
    owned: 4
    windows:
      - when: "Thu 01:00-02:00"
        owned: 8
  b:
    owned: 4
    windows:
      - when: "Thu 01:00-02:00"
        owned: 0
"""


def backlog() -> Workload:
    """Both consumers keep 20 one-GPU jobs of 10 h waiting or running: nothing ends
    during the run, so only the windows can move GPUs between them."""
    jobs = []
    for i in range(40):
        consumer = "/a" if i % 2 == 0 else "/b"
        jobs.append(SimJob(i, consumer, 0.0, 10 * HOUR, 1, 1))
    return Workload(name="windows", jobs=tuple(jobs))


def test_a_window_boundary_on_the_simulated_clock_changes_entitlements_and_reclaims() -> None:
    policy = load_policy(POLICY)
    nodes = ClusterSpec(nodes=1, gpus_per_node=8).build()
    seen: list[tuple[float, float, int, list[str]]] = []

    def on_cycle(now: float, plan: Plan) -> None:
        a = plan.consumers[ConsumerPath("/a")]
        seen.append((now, a.entitlement, a.allocation, [p.cause for p in plan.preemptions]))

    engine = Engine(
        backlog(),
        nodes,
        policy,
        FairShare(policy, 8),
        SimConfig(until_s=3 * HOUR),
        on_cycle=on_cycle,
    )
    result = engine.run()

    before = [s for s in seen if s[0] < HOUR]
    during = [s for s in seen if HOUR <= s[0] < 2 * HOUR]
    after = [s for s in seen if s[0] >= 2 * HOUR]
    # Before the window: 4 and 4, no preemption.
    assert before and all(ent == 4 and not causes for _, ent, _, causes in before)
    assert before[-1][2] == 4
    # A cycle runs at the boundary itself (nothing else happens then): /a is entitled to
    # all 8 and reclaims /b's 4 GPUs by preemption, starting at once.
    assert during[0][0] == HOUR and during[0][1] == 8
    assert "reclaim" in during[0][3]
    assert [c for s in during for c in s[3]] == ["reclaim"] * 4
    assert during[-1][2] == 8
    # When the window ends, /b reclaims its 4 in turn.
    assert after[0][0] == 2 * HOUR and after[0][1] == 4
    assert "reclaim" in after[0][3]
    assert [c for s in after for c in s[3]] == ["reclaim"] * 4
    assert after[-1][2] == 4
    assert result.preemptions_by_cause == {"reclaim": 8}
    # The measures follow the windows too: /a's entitlement over the run.
    assert engine.entitlement == [4.0, 4.0]


def test_without_windows_nothing_moves() -> None:
    policy = load_policy("version: 1\nconsumers: {a: {owned: 4}, b: {owned: 4}}\n")
    nodes = ClusterSpec(nodes=1, gpus_per_node=8).build()
    result = Engine(
        backlog(), nodes, policy, FairShare(policy, 8), SimConfig(until_s=3 * HOUR)
    ).run()
    assert result.preemptions == 0
