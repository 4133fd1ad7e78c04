"""The scheduling loop: the only author of decisions (ARCHITECTURE: the shell).

Each cycle: expire lost nodes, take a snapshot, run the pure `decide` in a worker
thread (it can take tens of milliseconds on a big cluster and must not stall
the agents' streams), commit the plan, hand the starts to the agents."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from schedulerd import core
from schedulerd.core.windows import next_boundary, policy_at, switches
from schedulerd.daemon import timelimits
from schedulerd.daemon.links import AgentLinks
from schedulerd.daemon.nodes import expire_nodes
from schedulerd.daemon.plans import DEFAULT_STORE_PORTS, apply_plan_async
from schedulerd.daemon.state import ClusterState
from schedulerd.daemon.wake import woken
from schedulerd.store import JobRecord, StoreUnavailable

log = logging.getLogger("schedulerd.loop")
# The least rest between two cycles: at most 100 a second, however many wakes.
MIN_REST_S = 0.010
# A cycle is decided on the event loop (not in a worker thread) when the last one took
# at most this long and at most INLINE_CHANGES jobs changed since (SchedulingLoop._cheap).
INLINE_DECIDE_S = 0.002
INLINE_CHANGES = 64


class SchedulingLoop:
    def __init__(
        self,
        state: ClusterState,
        links: AgentLinks,
        tick_s: float = 1.0,
        node_timeout_s: float = 120.0,
        store_ports: range = DEFAULT_STORE_PORTS,
        *,
        on_turn: Callable[[], None] | None = None,
        max_wait_s: float | None = None,
        hang_when: Path | None = None,
    ) -> None:
        self.store_ports = store_ports
        # Called after every turn, however it went: the systemd watchdog is fed from
        # here, so a loop that wedges (a deadlock, a call that never returns) stops
        # feeding it and systemd restarts the daemon. `max_wait_s` keeps idle turns
        # frequent enough for it.
        self.on_turn = on_turn
        self.max_wait_s = tick_s if max_wait_s is None else min(tick_s, max_wait_s)
        self.hang_when = hang_when  # the loop-hang failpoint (schedulerd/failpoints.py)
        self.state = state
        self.links = links
        self.tick_s = tick_s
        self.node_timeout_s = node_timeout_s
        self._wake = asyncio.Event()
        # time.monotonic() at the end of the last turn, however it went (None before
        # the first).
        self.last_turn: float | None = None
        # time.monotonic() at the end of the last turn whose cycle did not raise (None
        # before the first): /readyz and schedulerd_scheduler_seconds_since_last_cycle
        # tell a stalled loop by it, and a loop whose every cycle fails is one.
        self.last_good_turn: float | None = None
        # time.monotonic() when the loop was made: the metric counts from here before
        # the first good turn, so that a loop that never turns alerts too.
        self.created = time.monotonic()
        # The policy as resolved at the last cycle, while it has time windows: a window
        # that starts or ends is logged once (core/windows.py).
        self._in_force: core.Policy | None = None
        # The next window boundary, for the policy and from the time it was found.
        self._boundary: tuple[core.Policy, float, float | None] | None = None
        # What one cycle's decide() keeps for the next (core/cache.py): waiting queues
        # kept sorted, so that a cycle costs what changed. Used by one cycle at a time.
        self._decided = core.DecideCache()
        # The policy the last decide() ran with, and how long it took (None before).
        self._last_decided: tuple[core.Policy, float] | None = None

    def wake(self) -> None:
        """Something changed (a submission, a report, a node): decide soon."""
        self._wake.set()

    async def run(self) -> None:
        """Cycle until cancelled (`Daemon.stop_deciding`). A cancel lands only at an
        await: a plan is either committed and sent whole, or dropped."""
        while True:
            await woken(self._wake, self._wait_s())
            self._wake.clear()
            began = time.perf_counter()
            if self.hang_when is not None and self.hang_when.exists():
                log.warning("failpoint loop-hang: the scheduling loop blocks for good")
                await asyncio.to_thread(threading.Event().wait)
            failed = False
            try:
                await self.cycle()
            except Exception:  # a bad cycle must not kill the daemon; the next one retries
                log.exception("scheduling cycle failed")
                failed = True
            self.state.metrics.cycle_done(time.perf_counter() - began, failed)
            self.last_turn = time.monotonic()
            if not failed:
                self.last_good_turn = self.last_turn
            if self.on_turn is not None:
                self.on_turn()
            # Every submission and report wakes the loop, and a cycle costs time in
            # proportion to all the jobs held: run back to back under a burst, cycles
            # starved the handlers (sequential submissions fell from 134/s to 13/s as
            # 2,000 jobs queued). Rest as long as the cycle took, so that cycles take at
            # most half of the daemon's time; the wakes that come meanwhile are served
            # by one cycle. And at least MIN_REST_S: a cheap cycle woken by every one of
            # a stream of submissions cost each about a millisecond of CPU (issue 15:
            # sequential SubmitJobs from one client, measured under load: 278-307/s
            # with cycles back to back, 385-392/s with 10 ms between them). A lone wake
            # after a quiet spell is served at once: the rest has long passed.
            rest = max(time.perf_counter() - began, MIN_REST_S)
            await asyncio.sleep(min(rest, self.max_wait_s))

    def _wait_s(self) -> float:
        """How long to wait for a wake-up: a tick, or less when a time window of the
        policy starts or ends sooner, so that the cycle at the boundary switches the
        entitlements (and reclaims) on time even if nothing else happens."""
        policy = self.state.policy
        if policy is None or not policy.windowed:
            return self.max_wait_s
        now = self.state.clock()
        cached = self._boundary
        if cached is None or cached[0] is not policy or not cached[1] <= now < (cached[2] or 0):
            self._boundary = cached = (policy, now, next_boundary(policy, now))
        boundary = cached[2]
        if boundary is None:
            return self.max_wait_s
        # A hair past the boundary: a timer that fires a little early would decide
        # with the window that is ending.
        return max(0.0, min(self.max_wait_s, boundary - now + 0.01))

    def _note_windows(self, policy: core.Policy, now: float) -> None:
        """Log each consumer whose window in force changed since the last cycle."""
        if not policy.windowed and self._in_force is None:
            return
        resolved = policy_at(policy, now)
        for line in switches(self._in_force, resolved):
            log.info("%s", line)
        self._in_force = resolved if policy.windowed else None

    async def cycle(self) -> None:
        down, commands = expire_nodes(self.state, self.node_timeout_s)
        self.links.send_all(commands)
        for name in down:
            log.warning(
                "node %s is down: silent for %g s; its jobs go back to the queue, "
                "its GPUs stay fenced until its agent reports them free",
                name,
                self.node_timeout_s,
            )
            self.links.close(name)  # if its stream is open (a frozen agent), it must register again
        self._stop_overdue()
        policy = self.state.policy
        if policy is None:
            return
        now = self.state.clock()
        self._note_windows(policy, now)
        snapshot = self.state.snapshot()
        began = time.perf_counter()
        # decide() applies the policy's time windows at `now` (core/windows.py).
        if self._cheap(snapshot, policy):
            plan = core.decide(snapshot, policy, now, self._decided)
        else:
            plan = await asyncio.to_thread(core.decide, snapshot, policy, now, self._decided)
        took = time.perf_counter() - began
        self._last_decided = (policy, took)
        log.debug("decide() took %.1f ms", took * 1000)
        self.state.metrics.decide_time.observe(took)
        self.state.metrics.plan_sizes(plan)
        if policy is not self.state.policy:
            self.wake()  # a new policy came in meanwhile: this plan is stale
            return
        try:
            started, commands = await apply_plan_async(self.state, plan, self.store_ports)
        except StoreUnavailable as e:
            # Nothing of the plan changed memory or reached an agent; retried next cycle.
            log.error("plan not committed, nothing applied: %s", e)
            return
        for job in started:
            log.info("job %d started on %s: %s", job.id, _where(job), job.reason)
        for p in plan.preemptions:
            log.info("preempting job %d: %s", p.job_id, p.reason)
        for sh in plan.shrinks:
            log.info("shrinking job %d by %d GPUs: %s", sh.job_id, len(sh.slots), sh.reason)
        for g in plan.grows:
            log.info("growing job %d by %d GPUs: %s", g.job_id, len(g.slots), g.reason)
        self.links.send_all(commands)
        if len(started) < len(plan.starts):
            self.wake()  # some starts went stale: decide again with the new facts

    def _cheap(self, snapshot: core.Snapshot, policy: core.Policy) -> bool:
        """Whether to decide on the event loop rather than in a worker thread: when the
        last cycle was quick, under the same policy (a new one sorts every queue again),
        and few jobs changed since. A thread does not run the core beside the handlers
        (the GIL), it only lets them in every switch interval; for a cycle of a fraction
        of a millisecond (a submission storm: one cycle per few submissions) the hand-over
        to the thread and back cost more than the cycle (issue 15: sequential SubmitJob
        calls, ~0.1 ms each). A cycle that turns out long sends the next to the thread."""
        changes = snapshot.changes
        last = self._last_decided
        return (
            last is not None
            and last[0] is policy
            and last[1] <= INLINE_DECIDE_S
            and changes is not None
            and len(changes.jobs) <= INLINE_CHANGES
        )

    def _stop_overdue(self) -> None:
        # Only jobs holding parts can be running: not the whole queue, every cycle.
        for job in timelimits.overdue(self.state.holding_jobs(), self.state.clock()):
            try:
                _, stops = self.state.cancel(job.id, timelimits.reason(job), timed_out=True)
            except StoreUnavailable as e:
                log.error("job %d past its time limit, not stopped yet: %s", job.id, e)
                return
            log.info("stopping job %d: %s", job.id, timelimits.reason(job))
            self.links.send_all(stops)


def _where(job: JobRecord) -> str:
    return ", ".join(f"{p.node}:{','.join(map(str, p.gpu_indices))}" for p in job.parts)
