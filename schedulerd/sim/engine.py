"""The simulator: a virtual clock, a simulated cluster, and a scheduler's plans
applied as the daemon and agents would apply them.

Time moves from one moment to the next: an event (a job arrives, ends, finishes
stopping, or gives back the GPUs of a shrink) or a scheduling cycle. Cycles run on
the interval's ticks, as the daemon's loop does, but only when they could decide
something new: after a change, after a plan that did something (the next cycle may
do more), or when a running job's `min_runtime` runs out (it becomes preemptible).
An idle cluster costs nothing, so months of trace replay in minutes.

What the simulated agents do with a plan:
- start: the job runs from now; it ends when its work is done;
- preempt: the job stops making progress; after `stop_s` (at most its consumer's
  grace) its GPUs are free and it is back in the queue in its old place, keeping
  the work done so far (it checkpointed in its grace) unless `restart_lost`;
- shrink: the job runs on fewer GPUs at once; the released ones are free after
  `resize_s`; grow: the new GPUs work from now. Elastic work scales linearly.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from schedulerd.core import (
    ConsumerPath,
    GpuSlot,
    Job,
    JobId,
    JobPhase,
    Node,
    Order,
    Plan,
    Policy,
    Snapshot,
    divide,
)
from schedulerd.core.usage import decay_usage
from schedulerd.core.windows import next_boundary, policy_at, window_state
from schedulerd.sim.metrics import ClusterState, Recorder
from schedulerd.sim.schedulers import Scheduler
from schedulerd.sim.workload import SimJob, Workload

# Event kinds, in the order they are handled when they fall on the same instant.
ARRIVE, END, STOPPED, RELEASED = 0, 1, 2, 3


@dataclass(frozen=True)
class SimConfig:
    # A cycle runs at the first tick after a change. The daemon decides as soon as
    # something changes and every second when idle, so 1 s models it closely.
    interval_s: float = 1.0
    stop_s: float = 30.0  # how long a preempted job takes to exit (capped by grace)
    resize_s: float = 2.0  # how long a shrink takes to hand its GPUs back
    restart_lost: bool = False  # a preempted job starts over (no checkpoint)
    until_s: float | None = None  # stop the run here (virtual seconds)
    bins: int = 400  # time bins of the per-consumer series (plots)


@dataclass
class Outcome:
    """One job's history, for waits and completion times."""

    spec: SimJob
    first_start: float | None = None
    end: float | None = None
    preemptions: int = 0
    refused: bool = False


@dataclass
class Live:
    """A job that is waiting or running, and the engine's bookkeeping for it."""

    spec: SimJob
    job: Job
    outcome: Outcome
    work_left: float
    progress_since: float | None = None  # last time work_left was brought up to date
    version: int = 0  # bumps when the pending end event is no longer valid
    attempt: int = 0  # bumps at each requeue: a shrink's release belongs to one attempt

    @property
    def active(self) -> int:
        """GPUs doing work now: not the ones being released or a stopping job's."""
        if self.job.phase is not JobPhase.RUNNING or self.job.stopping:
            return 0
        return len(self.job.held) - len(self.job.releasing)


@dataclass
class Result:
    scheduler: str
    workload: str
    recorder: Recorder
    outcomes: list[Outcome]
    cycle_s: list[float] = field(default_factory=list)
    preemptions: int = 0
    preemptions_by_cause: dict[str, int] = field(default_factory=dict)
    shrinks: int = 0
    grows: int = 0
    wall_s: float = 0.0
    virtual_s: float = 0.0
    unfinished: int = 0


class Engine:
    def __init__(
        self,
        workload: Workload,
        nodes: tuple[Node, ...],
        policy: Policy,
        scheduler: Scheduler,
        config: SimConfig | None = None,
        on_cycle: Callable[[float, Plan], None] | None = None,
    ) -> None:
        self.workload = workload
        self.nodes = nodes
        self.policy = policy
        self.scheduler = scheduler
        self.config = config or SimConfig()
        self.on_cycle = on_cycle
        self.capacity = sum(len(n.gpus) for n in nodes)
        self.largest_node = max(len(n.gpus) for n in nodes)
        self.free: dict[str, int] = {n.name: len(n.gpus) for n in nodes}
        self.leaves = [str(p) for p in policy.leaves()]
        self.leaf_index = {c: i for i, c in enumerate(self.leaves)}
        self.live: dict[JobId, Live] = {}
        self.pending: set[JobId] = set()
        self.events: list[tuple[float, int, int, int, int, tuple[GpuSlot, ...]]] = []
        self._seq = 0
        self.now = 0.0
        self.outcomes = [Outcome(spec=j) for j in workload.jobs]
        self.held_for_reclaim: tuple[GpuSlot, ...] = ()
        self.usage: dict[tuple[ConsumerPath, str], float] = {}
        self.usage_at = 0.0
        # Only the `fairshare` order and `usage_weight` read usage: a replay without
        # either skips the cost.
        self.tracks_usage = policy.usage_weight > 0 or any(
            c.order is Order.FAIRSHARE for c in policy.consumers.values()
        )
        # Kept up to date at every change, so that measuring costs O(consumers).
        self.alloc = [0] * len(self.leaves)
        self.waiting = [0] * len(self.leaves)
        self.waiting_sizes: dict[int, int] = defaultdict(int)
        self.waiting_gpus = 0  # GPUs (their min) wanted by waiting jobs
        self.demand: dict[ConsumerPath, int] = defaultdict(int)
        self.entitlement: list[float] | None = None
        # The policy's time windows in force when `entitlement` was divided: decide()
        # reads the windows at the virtual `now` as unix time (core/windows.py).
        self.window_state: tuple[int, ...] = ()
        # Consumers whose jobs wait a while before reclaim acts for them: a cycle must
        # run when that time is up (reclaim_patience).
        self.patient = {
            p: c.reclaim_patience_s for p, c in policy.consumers.items() if c.reclaim_patience_s > 0
        }
        self.elastic_running = 0
        first = workload.jobs[0].submit_s if workload.jobs else 0.0
        last = workload.jobs[-1].submit_s if workload.jobs else 1.0
        bin_s = max(self.config.interval_s, (last - first) / self.config.bins, 1.0)
        self.recorder = Recorder(self.leaves, self.capacity, first, bin_s)
        self.result = Result(
            scheduler=scheduler.name,
            workload=workload.name,
            recorder=self.recorder,
            outcomes=self.outcomes,
        )

    # --- the loop -------------------------------------------------------------

    def run(self) -> Result:
        started = time.perf_counter()
        for spec in self.workload.jobs:
            self._push(spec.submit_s, ARRIVE, spec.id)
        tick = self.config.interval_s
        until = self.config.until_s if self.config.until_s is not None else math.inf
        next_cycle: float | None = None
        while True:
            t_event = self.events[0][0] if self.events else math.inf
            t_cycle = next_cycle if next_cycle is not None else math.inf
            t = min(t_event, t_cycle)
            if t == math.inf:
                break
            if t > until:
                self.now = until
                break
            self.recorder.advance(t)
            self.now = t
            if self.tracks_usage:
                self._decay_usage()  # what was held since the last event, before it changes
            if t_event <= t_cycle:
                while self.events and self.events[0][0] == t:
                    self._handle(heapq.heappop(self.events))
                # With nothing waiting and no elastic job that could grow, a
                # cycle can decide nothing: skip it (most ends, on a big cluster).
                if self.pending or self.elastic_running:
                    soon = _tick_at_or_after(t, tick)
                    next_cycle = soon if next_cycle is None else min(next_cycle, soon)
                self._observe(after_cycle=False)
                continue
            plan = self._cycle()
            did = bool(plan.starts or plan.grows or plan.shrinks or plan.preemptions)
            next_cycle = None
            if did and (self.pending or (self.elastic_running and self._growable())):
                next_cycle = t + tick  # it may do more: start what waited, grow what started
            elif self.pending and self.scheduler.time_sensitive:
                wake = self._next_wake()
                if wake is not None:
                    # Strictly later: a cycle that decided nothing must not repeat now.
                    next_cycle = max(_tick_at_or_after(wake, tick), t + tick)
            self._observe(after_cycle=True)
        self.recorder.advance(self.now)
        self.result.virtual_s = self.recorder.span_s
        self.result.unfinished = len(self.live)
        self.result.wall_s = time.perf_counter() - started
        return self.result

    def _push(
        self, t: float, kind: int, job_id: int, version: int = 0, slots: tuple[GpuSlot, ...] = ()
    ) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, kind, self._seq, job_id, version, slots))

    # --- events ---------------------------------------------------------------

    def _handle(self, event: tuple[float, int, int, int, int, tuple[GpuSlot, ...]]) -> None:
        _, kind, _, job_id, version, slots = event
        if kind == ARRIVE:
            self._arrive(self.workload.jobs[job_id])
            return
        live = self.live.get(JobId(job_id))
        if live is None:
            return
        if kind == END and version == live.version:
            self._end(live)
        elif kind == STOPPED and live.job.stopping:
            self._requeue(live)
        elif kind == RELEASED and version == live.attempt:
            self._release(live, slots)

    def _arrive(self, spec: SimJob) -> None:
        outcome = self.outcomes[spec.id]
        if ConsumerPath(spec.consumer) not in self.policy.consumers or not self.scheduler.admits(
            spec.consumer, spec.gpus_min
        ):
            outcome.refused = True
            return
        job = Job(
            id=JobId(spec.id),
            consumer=ConsumerPath(spec.consumer),
            user=spec.user,
            gpus_min=spec.gpus_min,
            gpus_max=spec.gpus_max,
            priority=spec.priority,
            submit_seq=spec.id,
            phase=JobPhase.PENDING,
            time_limit_s=spec.time_limit_s,
            pool=spec.pool,
            waiting_since=self.now,
        )
        self.live[job.id] = Live(spec=spec, job=job, outcome=outcome, work_left=spec.work)
        self._wait(job)
        self._demand(job.consumer, job.gpus_max)

    def _end(self, live: Live) -> None:
        self._account(live)
        self._free(live.job.consumer, live.job.held)
        self._demand(live.job.consumer, -live.job.gpus_max)
        if live.job.elastic:
            self.elastic_running -= 1
        live.outcome.end = self.now
        del self.live[live.job.id]

    def _requeue(self, live: Live) -> None:
        """A preempted job has exited: its GPUs are free, it waits again."""
        self._free(live.job.consumer, live.job.held)
        live.outcome.preemptions += 1
        live.attempt += 1
        if live.job.elastic:
            self.elastic_running -= 1
        if self.config.restart_lost:
            live.work_left = live.spec.work
        live.version += 1
        live.progress_since = None
        live.job = dataclasses.replace(
            live.job,
            phase=JobPhase.PENDING,
            held=(),
            started_at=None,
            anchor=None,
            releasing=(),
            stopping=False,
            release_deadline=None,
            preemptions=live.outcome.preemptions,
            waiting_since=self.now,
        )
        self._wait(live.job)

    def _release(self, live: Live, slots: tuple[GpuSlot, ...]) -> None:
        """A shrink is done: the released workers are gone. Slots no longer
        releasing (the job ended or was stopped meanwhile) were freed already."""
        gone = set(slots) & set(live.job.releasing)
        if not gone:
            return
        self._free(live.job.consumer, tuple(gone))
        releasing = tuple(s for s in live.job.releasing if s not in gone)
        live.job = dataclasses.replace(
            live.job,
            held=tuple(s for s in live.job.held if s not in gone),
            releasing=releasing,
            release_deadline=live.job.release_deadline if releasing else None,
        )

    # --- a cycle --------------------------------------------------------------

    def _cycle(self) -> Plan:
        snapshot = Snapshot(
            nodes=self.nodes,
            jobs=tuple(lv.job for lv in self.live.values()),
            user_usage=dict(self.usage),
        )
        t0 = time.perf_counter()
        plan = self.scheduler.plan(snapshot, self.now)
        self.result.cycle_s.append(time.perf_counter() - t0)
        for start in plan.starts:
            self._start(self.live[start.job_id], start.slots)
        for grow in plan.grows:
            self._grow(self.live[grow.job_id], grow.slots)
        for shrink in plan.shrinks:
            self._shrink(self.live[shrink.job_id], shrink.slots)
        for preempt in plan.preemptions:
            self._preempt(self.live[preempt.job_id])
            causes = self.result.preemptions_by_cause
            causes[preempt.cause] = causes.get(preempt.cause, 0) + 1
        self.held_for_reclaim = plan.held
        if self.on_cycle is not None:
            self.on_cycle(self.now, plan)
        return plan

    def _start(self, live: Live, slots: tuple[GpuSlot, ...]) -> None:
        self._take(live.job.consumer, slots)
        self._unwait(live.job)
        live.job = dataclasses.replace(
            live.job,
            phase=JobPhase.RUNNING,
            held=tuple(slots),
            started_at=self.now,
            anchor=slots[0] if live.job.elastic else None,
        )
        if live.job.elastic:
            self.elastic_running += 1
        if live.outcome.first_start is None:
            live.outcome.first_start = self.now
        live.progress_since = self.now
        self._schedule_end(live)

    def _grow(self, live: Live, slots: tuple[GpuSlot, ...]) -> None:
        self._account(live)
        self._take(live.job.consumer, slots)
        live.job = dataclasses.replace(live.job, held=live.job.held + tuple(slots))
        self.result.grows += 1
        self._schedule_end(live)

    def _shrink(self, live: Live, slots: tuple[GpuSlot, ...]) -> None:
        self._account(live)
        live.job = dataclasses.replace(
            live.job,
            releasing=live.job.releasing + tuple(slots),
            release_deadline=self.now + self.config.resize_s,
        )
        self.result.shrinks += 1
        self._schedule_end(live)
        self._push(self.now + self.config.resize_s, RELEASED, live.job.id, live.attempt, slots)

    def _preempt(self, live: Live) -> None:
        self._account(live)
        grace = self.policy.consumers[live.job.consumer].grace_s
        stop = min(self.config.stop_s, grace)
        live.version += 1  # no end while it stops: it makes no progress
        live.job = dataclasses.replace(live.job, stopping=True, release_deadline=self.now + grace)
        self.result.preemptions += 1
        self._push(self.now + stop, STOPPED, live.job.id)

    # --- bookkeeping ------------------------------------------------------------

    def _decay_usage(self) -> None:
        """Decayed usage up to now, by the daemon's own function (core/usage.py), so the
        `fairshare` order sees here what it sees there."""
        held: dict[tuple[ConsumerPath, str], float] = {}
        for lv in self.live.values():
            if lv.job.held:
                key = (lv.job.consumer, lv.job.user)
                held[key] = held.get(key, 0.0) + len(lv.job.held)
        dt = self.now - self.usage_at
        self.usage = decay_usage(self.usage, held, dt, self.policy.usage_half_life_s)
        self.usage_at = self.now

    def _account(self, live: Live) -> None:
        """Bring a running job's remaining work up to now."""
        if live.progress_since is not None:
            live.work_left -= live.active * (self.now - live.progress_since)
            live.progress_since = self.now

    def _schedule_end(self, live: Live) -> None:
        live.version += 1
        rate = live.active
        if rate > 0:
            end = self.now + max(live.work_left, 0.0) / rate
            limit = live.spec.time_limit_s
            started = live.job.started_at
            if limit is not None and started is not None:
                # Past its time limit the daemon stops it (daemon/timelimits.py): so here.
                end = min(end, started + limit)
            self._push(end, END, live.job.id, live.version)

    def _take(self, consumer: ConsumerPath, slots: tuple[GpuSlot, ...]) -> None:
        for s in slots:
            self.free[s.node] -= 1
        self.alloc[self.leaf_index[consumer]] += len(slots)

    def _free(self, consumer: ConsumerPath, slots: tuple[GpuSlot, ...]) -> None:
        for s in slots:
            self.free[s.node] += 1
        self.alloc[self.leaf_index[consumer]] -= len(slots)

    def _wait(self, job: Job) -> None:
        self.pending.add(job.id)
        self.waiting[self.leaf_index[job.consumer]] += 1
        self.waiting_sizes[job.gpus_min] += 1
        self.waiting_gpus += job.gpus_min

    def _unwait(self, job: Job) -> None:
        self.pending.discard(job.id)
        self.waiting[self.leaf_index[job.consumer]] -= 1
        self.waiting_sizes[job.gpus_min] -= 1
        self.waiting_gpus -= job.gpus_min
        if not self.waiting_sizes[job.gpus_min]:
            del self.waiting_sizes[job.gpus_min]

    def _demand(self, consumer: ConsumerPath, gpus: int) -> None:
        self.demand[consumer] += gpus
        if not self.demand[consumer]:
            del self.demand[consumer]
        self.entitlement = None  # divide again at the next observation

    def _growable(self) -> bool:
        """Whether some running elastic job could still grow."""
        return any(
            lv.job.phase is JobPhase.RUNNING and len(lv.job.held) < lv.job.gpus_max
            for lv in self.live.values()
        )

    def _next_wake(self) -> float | None:
        """When time alone may change the plan: a job becomes preemptible, or a time
        window of the policy starts or ends (entitlements change; reclaim may follow)."""
        wake = self._next_preemptible()
        patience = self._next_patience_end()
        if patience is not None and (wake is None or patience < wake):
            wake = patience
        boundary = next_boundary(self.policy, self.now)
        if boundary is not None and (wake is None or boundary < wake):
            return boundary
        return wake

    def _next_patience_end(self) -> float | None:
        """When the next waiting job has waited its consumer's reclaim_patience."""
        if not self.patient:
            return None
        soonest: float | None = None
        for job_id in self.pending:
            job = self.live[job_id].job
            patience = self.patient.get(job.consumer, 0.0)
            if patience <= 0 or job.waiting_since is None:
                continue
            at = job.waiting_since + patience
            if at > self.now and (soonest is None or at < soonest):
                soonest = at
        return soonest

    def _next_preemptible(self) -> float | None:
        """When the next running job outlives its consumer's min_runtime."""
        soonest: float | None = None
        for live in self.live.values():
            job = live.job
            if job.started_at is None or job.stopping:
                continue
            at = job.started_at + self.policy.consumers[job.consumer].min_runtime_s
            if at > self.now and (soonest is None or at < soonest):
                soonest = at
        return soonest

    # --- measures ---------------------------------------------------------------

    def _observe(self, after_cycle: bool) -> None:
        if self.policy.windowed:
            state = window_state(self.policy, self.now)
            if state != self.window_state:
                self.window_state, self.entitlement = state, None
        if self.entitlement is None:
            policy = policy_at(self.policy, self.now)
            division = divide(policy, self.capacity, self.demand)
            self.entitlement = [division.entitlement.get(ConsumerPath(c), 0.0) for c in self.leaves]
        smallest = min(self.waiting_sizes, default=0)
        self.recorder.set(
            ClusterState(
                allocation=list(self.alloc),
                entitlement=self.entitlement,
                backlogged=[w > 0 for w in self.waiting],
                demand=sum(self.demand.values()),
                idle_beside_waiting=after_cycle and smallest > 0 and self._fits(smallest),
                wanted_while_free=self._wanted_while_free() if after_cycle else 0,
            )
        )

    def _wanted_while_free(self) -> int:
        """min(free GPUs not held for a reclaim or a reservation, GPUs wanted by
        waiting jobs): what waiting jobs wanted while GPUs sat free, whether one of
        them fit or not (fragmentation shows here, not in `_fits`)."""
        if not self.waiting_gpus:
            return 0
        # Right after the cycle every held GPU is free: the plan gave it to no one.
        unheld = max(0, sum(self.free.values()) - len(set(self.held_for_reclaim)))
        return min(unheld, self.waiting_gpus)

    def _fits(self, gpus: int) -> bool:
        """Whether free GPUs (not held for a reclaim) could take a job of this size."""
        free = self.free
        if self.held_for_reclaim:
            free = dict(free)
            for s in self.held_for_reclaim:
                free[s.node] -= 1
        if gpus > self.largest_node:
            return sum(free.values()) >= gpus
        return max(free.values(), default=0) >= gpus


def _tick_at_or_after(t: float, tick: float) -> float:
    """The first tick at or after t. ceil(t / tick) * tick alone can land a hair
    before t (0.3 is not exact in binary), which once made a run repeat a cycle at
    the same instant forever."""
    at = math.ceil(t / tick) * tick
    return at if at >= t else at + tick
