"""The daemon's event metrics (docs/metrics.md): counters and histograms updated where
things happen, in one CollectorRegistry per daemon (tests run several in a process).
The gauges of the cluster's state are read at scrape time instead
(schedulerd/daemon/web/metrics.py).

Hooks, and only these: `ClusterState.submit*` (submissions), `Change.commit` (starts,
ends and requeues, as committed), `apply_plan` (preemptions, shrinks and grows sent),
the scheduling loop (cycle and decide() times, plan sizes), the agents' reports as
recorded (`daemon/reports.py`) and the API's CallWrapper (requests by method and status
code).

Labels are bounded: consumers (by the policy), methods (by the API), status codes,
and the closed sets of kinds below; never a job id, a user or a command.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from schedulerd import core
from schedulerd.core.reasons import count_kinds
from schedulerd.store import EventRecord, JobRecord, JobState

# No `_created` series: they double the counters and no panel or rule reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds: from a millisecond (a small cluster's cycle, a status call) to a minute.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Seconds a job waits for its first start: from a second to a day.
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
# Actions in one plan.
SIZE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)

ENDED_STATES = tuple(s.value for s in JobState if s.ended)
# The causes a job goes back to the queue with (daemon/endings.py: requeue()).
REQUEUE_CAUSES = ("preempted", "lost", "node-stopped", "refused")
START_KINDS = ("entitled", "borrowing", "backfill", "other")
PREEMPT_CAUSES = ("reclaim", "priority")

# Why a job waits, as a kind (schedulerd_consumer_jobs_waiting{reason}): read from the
# reason text core/reasons.py (and pools.py, reclaim.py, reservation.py) writes, most
# telling first. The first that matches wins; "other" when none does.
WAIT_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("new", ("waiting for the next scheduling cycle",)),
    ("consumer", ("is not a leaf of the policy in force",)),
    ("pool", ("waiting for pool ",)),
    ("reclaim", ("reclaim from ", "GPUs on their way back", "its GPUs are free and held for it")),
    ("reservation", ("holds a reservation on ",)),
    ("limit", (" of its limit ",)),
    ("borrow", ("may not borrow",)),
    ("reserved", ("reserved (lend: false)",)),
    ("nodes", ("are schedulable now",)),
    ("fragmented", (" on one node:",)),
    ("fair", ("below its entitlement, it is served first",)),
    ("capacity", ("no GPU is free", " free")),
)
WAIT_KIND_NAMES = (*(kind for kind, _ in WAIT_KINDS), "other")


def waiting_kind(reason: str) -> str:
    """The kind of a waiting job's reason: one of WAIT_KIND_NAMES."""
    for kind, marks in WAIT_KINDS:
        if any(m in reason for m in marks):
            return kind
    return "other"


def start_kind(reason: str) -> str:
    """How a start came about (core/reasons.py start_reason, decide.py's backfill)."""
    if "backfill" in reason:
        return "backfill"
    if "within its entitlement" in reason:
        return "entitled"
    if "borrowing" in reason:
        return "borrowing"
    return "other"


def shrink_cause(reason: str) -> str:
    """A shrink's cause, as a preemption's (core/reclaim.py: _victim_reason)."""
    return "priority" if "(priority preemption)" in reason else "reclaim"


class DaemonMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # Consumer -> when (the state's clock) it was last found below floor(entitlement)
        # with waiting jobs, after a cycle that did not end it.
        self.below_since: dict[str, float] = {}
        # Waiting jobs by (consumer, kind of reason), counted after each scheduling
        # cycle (apply_plan, where the reasons are set) and read by the scrape; None
        # before the first count.
        self._waiting_counts: dict[tuple[str, str], int] | None = None
        # The last plan's reasons, counted when a scrape first asks (waiting_counts).
        self._waiting_plan: tuple[Mapping[core.JobId, str], Mapping[int, JobRecord]] | None = None
        self.submitted = Counter(
            "schedulerd_jobs_submitted_total", "Jobs queued", ["consumer"], registry=r
        )
        self.started = Counter(
            "schedulerd_jobs_started_total",
            "Job starts (restarts after a requeue included), by how the GPUs were had: "
            "entitled, borrowing, backfill",
            ["consumer", "reason"],
            registry=r,
        )
        self.ended = Counter(
            "schedulerd_jobs_ended_total",
            "Jobs ended, by final state",
            ["consumer", "state"],
            registry=r,
        )
        self.requeued = Counter(
            "schedulerd_jobs_requeued_total",
            "Running jobs put back in the queue, by cause",
            ["consumer", "cause"],
            registry=r,
        )
        self.wait = Histogram(
            "schedulerd_job_submit_to_start_seconds",
            "Seconds from submission to a job's first start",
            ["consumer"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.preemptions = Counter(
            "schedulerd_scheduler_preemptions_total",
            "Preemptions sent, by the victim's consumer and the cause (reclaim, priority)",
            ["consumer", "cause"],
            registry=r,
        )
        self.shrinks = Counter(
            "schedulerd_scheduler_shrinks_total",
            "Elastic jobs shrunk, by consumer and cause (reclaim, priority)",
            ["consumer", "cause"],
            registry=r,
        )
        self.grows = Counter(
            "schedulerd_scheduler_grows_total",
            "Elastic jobs grown onto idle GPUs, by consumer",
            ["consumer"],
            registry=r,
        )
        self.cycles = Counter(
            "schedulerd_scheduler_cycles_total", "Turns of the scheduling loop", registry=r
        )
        self.cycle_failures = Counter(
            "schedulerd_scheduler_cycle_failures_total",
            "Scheduling cycles that raised (logged; the next one retries)",
            registry=r,
        )
        self.cycle_time = Histogram(
            "schedulerd_scheduler_cycle_duration_seconds",
            "Seconds of one scheduling cycle: expiry, snapshot, decide(), commit, send",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.decide_time = Histogram(
            "schedulerd_scheduler_decide_duration_seconds",
            "Seconds of core.decide() in one cycle",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.plan_size = Histogram(
            "schedulerd_scheduler_plan_actions",
            "Actions in one cycle's plan, by action (start, preempt, shrink, grow)",
            ["action"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.last_cycle = Gauge(
            "schedulerd_scheduler_last_cycle_timestamp_seconds",
            "Unix time the scheduling loop last turned (a stalled loop stops moving it)",
            registry=r,
        )
        self.requests = Counter(
            "schedulerd_api_requests_total",
            "gRPC calls handled, by method (Service.Method) and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "schedulerd_api_request_duration_seconds",
            "Seconds to answer a unary gRPC call, by method and status code",
            ["method", "code"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.reports = Counter(
            "schedulerd_agent_reports_total",
            "Agents' reports of their jobs' parts recorded (committed), on their streams",
            registry=r,
        )
        self.report_changes = Counter(
            "schedulerd_agent_report_changes_total",
            "Transactions those reports were recorded in (reports from many nodes share one)",
            registry=r,
        )
        self.streams = Gauge(
            "schedulerd_api_streams_open",
            "Streaming gRPC calls open now (agents' links, watches), by method",
            ["method"],
            registry=r,
        )

    # -- hooks ----------------------------------------------------------------

    def submitted_jobs(self, jobs: Iterable[JobRecord]) -> None:
        for job in jobs:
            self.submitted.labels(job.consumer).inc()

    def reports_recorded(self, count: int, *, transaction: bool) -> None:
        """`count` agents' reports were recorded in one change; `transaction`: it wrote
        something (a report that changes nothing commits no transaction)."""
        self.reports.inc(count)
        if transaction:
            self.report_changes.inc()

    def committed(self, events: Iterable[EventRecord], jobs: Mapping[int, JobRecord]) -> None:
        """A Change was committed: its events say what happened to which job."""
        for event in events:
            job = jobs.get(event.job_id)
            if job is None:
                continue
            kind = event.kind
            if kind == "started":
                self.started.labels(job.consumer, start_kind(event.message)).inc()
                if job.attempt == 0 and job.start_time is not None:
                    self.wait.labels(job.consumer).observe(
                        max(0.0, job.start_time - job.submit_time)
                    )
            elif kind.upper() in ENDED_STATES:
                self.ended.labels(job.consumer, kind.upper()).inc()
            elif kind in REQUEUE_CAUSES:
                self.requeued.labels(job.consumer, kind).inc()

    def plan_applied(
        self, preempted: list[tuple[str, str]], shrunk: list[tuple[str, str]], grown: list[str]
    ) -> None:
        for consumer, cause in preempted:
            self.preemptions.labels(consumer, cause).inc()
        for consumer, cause in shrunk:
            self.shrinks.labels(consumer, cause).inc()
        for consumer in grown:
            self.grows.labels(consumer).inc()

    def consumers_decided(
        self, consumers: Mapping[core.ConsumerPath, core.ConsumerState], now: float
    ) -> None:
        """After each cycle: which consumers hold fewer than the whole GPUs of their
        entitlement (SEMANTICS' guarantee: floor(entitlement)) while jobs of theirs
        wait, and since when (schedulerd_consumer_below_entitlement_seconds)."""
        for path, c in consumers.items():
            owed = math.floor(c.entitlement + 1e-9)
            if c.pending_jobs > 0 and c.allocation < owed:
                self.below_since.setdefault(str(path), now)
            else:
                self.below_since.pop(str(path), None)
        for gone in set(self.below_since) - {str(p) for p in consumers}:
            del self.below_since[gone]

    def count_waiting(self, jobs: Iterable[JobRecord]) -> dict[tuple[str, str], int]:
        """Count the waiting jobs by (consumer, kind of reason), keep the counts for
        the scrapes until the next call, and return them. Once per cycle: a pass over
        the jobs, the reason texts classified once each (many jobs share one)."""
        pending, preempted = JobState.PENDING, JobState.PREEMPTED  # JobState.waiting
        by_reason: dict[tuple[str, str], int] = {}
        for job in jobs:
            if job.state is pending or job.state is preempted:
                key = (job.consumer, job.reason)
                by_reason[key] = by_reason.get(key, 0) + 1
        kinds: dict[str, str] = {}
        counts: dict[tuple[str, str], int] = {}
        for (consumer, reason), n in by_reason.items():
            kind = kinds.get(reason)
            if kind is None:
                kind = kinds[reason] = waiting_kind(reason)
            counts[(consumer, kind)] = counts.get((consumer, kind), 0) + n
        self.waiting_counts = counts
        return counts

    def count_waiting_plan(
        self, reasons: Mapping[core.JobId, str], jobs: Mapping[int, JobRecord]
    ) -> dict[tuple[str, str], int]:
        """count_waiting over the jobs a plan left waiting, from the plan's reasons: a
        reason classified per leaf and job size, not per job (core.reasons.count_kinds).
        Jobs submitted while the cycle decided are counted by the next one."""

        def consumer_of(job_id: core.JobId) -> str | None:
            job = jobs.get(job_id)
            return None if job is None else job.consumer

        counts = count_kinds(reasons, consumer_of, waiting_kind)
        self.waiting_counts = counts
        return counts

    def waiting_plan(
        self, reasons: Mapping[core.JobId, str], jobs: Mapping[int, JobRecord]
    ) -> None:
        """Keep the last plan's waiting reasons, to be counted by kind when a scrape
        asks (count_waiting_plan): a cycle does not classify them, a scrape classifies
        one reason per leaf and job size, once per plan."""
        self._waiting_plan = (reasons, jobs)

    @property
    def waiting_counts(self) -> dict[tuple[str, str], int] | None:
        """Waiting jobs by (consumer, kind of reason) as of the last cycle; None before."""
        if self._waiting_plan is not None:
            reasons, jobs = self._waiting_plan
            self._waiting_plan = None
            self.count_waiting_plan(reasons, jobs)
        return self._waiting_counts

    @waiting_counts.setter
    def waiting_counts(self, counts: dict[tuple[str, str], int] | None) -> None:
        self._waiting_counts = counts

    def plan_sizes(self, plan: core.Plan) -> None:
        sizes = {
            "start": len(plan.starts),
            "preempt": len(plan.preemptions),
            "shrink": len(plan.shrinks),
            "grow": len(plan.grows),
        }
        for action, n in sizes.items():
            self.plan_size.labels(action).observe(n)

    def cycle_done(self, seconds: float, failed: bool) -> None:
        self.cycles.inc()
        if failed:
            self.cycle_failures.inc()
        self.cycle_time.observe(seconds)
        self.last_cycle.set(time.time())

    def api_call(self, method: str, code: str, seconds: float | None) -> None:
        """One call ended; `seconds` for unary calls only (a stream's life is no latency)."""
        self.requests.labels(method, code).inc()
        if seconds is not None:
            self.latency.labels(method, code).observe(seconds)
