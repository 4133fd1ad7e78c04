"""The daemon's live state, written through to the store.

Every change is committed to SQLite before it is visible or acknowledged, so the
store can always rebuild this object (`ClusterState.load`). Only the scheduling
loop applies plans; servicers record facts (submissions, reports) here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

from schedulerd import core
from schedulerd.core import ConsumerPath, ConsumerState, GpuSlot, JobId, NodeName
from schedulerd.daemon.commands import Outbox, StopPart
from schedulerd.store import (
    EventRecord,
    JobRecord,
    JobState,
    NodeRecord,
    PartPhase,
    PolicyRecord,
    Store,
)

USAGE_HALF_LIFE_S = 3600.0  # the fairshare order's memory of a user's past GPU-seconds


class SubmitError(ValueError):
    """A submission refused with a reason a person can act on."""


class ClusterState:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self.jobs: dict[int, JobRecord] = {}  # pending and running only
        self.nodes: dict[str, NodeRecord] = {}
        self.connected: set[str] = set()
        self.policy: core.Policy | None = None
        self.policy_record: PolicyRecord | None = None
        self.consumer_states: dict[ConsumerPath, ConsumerState] = {}
        self.usage: dict[tuple[ConsumerPath, str], float] = defaultdict(float)
        self._usage_at = clock()
        self.listeners: list[Callable[[JobRecord], None]] = []
        # The core's view of each waiting job, kept while the job's fields are the
        # same: a backlog of thousands would otherwise be rebuilt every cycle (a
        # third of the daemon's time under a burst of submissions).
        self._waiting_views: dict[int, tuple[tuple[object, ...], core.Job]] = {}

    # -- loading and policy -------------------------------------------------

    def load(self) -> None:
        now = self.clock()
        for job in self.store.load_jobs(active_only=True):
            self.jobs[job.id] = job
        for node in self.store.load_nodes():
            # Nobody is connected yet: the node timeout counts from now.
            node.last_seen = now
            self.nodes[node.name] = node
        self.policy_record = self.store.latest_policy()

    def set_policy(self, policy: core.Policy, record: PolicyRecord) -> None:
        self.policy = policy
        self.policy_record = record

    def orphaned_consumers(self, policy: core.Policy) -> dict[str, int]:
        """Consumers with waiting or running jobs that `policy` has no leaf for."""
        orphans: dict[str, int] = defaultdict(int)
        for job in self.jobs.values():
            if not policy.is_leaf(ConsumerPath(job.consumer)):
                orphans[job.consumer] += 1
        return dict(orphans)

    # -- snapshots for the core ---------------------------------------------

    def schedulable(self, node: NodeRecord) -> bool:
        return node.name in self.connected and not node.drained and not node.down

    def snapshot(self) -> core.Snapshot:
        self._decay_usage()
        nodes = tuple(
            core.Node(NodeName(n.name), tuple(g.index for g in n.gpus), self.schedulable(n))
            for n in self.nodes.values()
        )
        jobs = tuple(self._core_view(j) for j in self.jobs.values())
        for gone in self._waiting_views.keys() - self.jobs.keys():
            del self._waiting_views[gone]
        return core.Snapshot(nodes=nodes, jobs=jobs, user_usage=dict(self.usage))

    def _core_view(self, job: JobRecord) -> core.Job:
        if job.parts:  # running, or placed: built fresh (its parts change in place)
            self._waiting_views.pop(job.id, None)
            return _core_job(job)
        key = (
            job.state,
            job.consumer,
            job.user,
            job.gpus_min,
            job.gpus_max,
            job.priority,
            job.start_time,
            job.release_deadline,
            job.cancel_requested,
            job.preempting,
        )
        cached = self._waiting_views.get(job.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        view = _core_job(job)
        self._waiting_views[job.id] = (key, view)
        return view

    def cluster_shape(self) -> core.ClusterShape:
        return core.ClusterShape(tuple(len(n.gpus) for n in self.nodes.values()))

    def _decay_usage(self) -> None:
        now = self.clock()
        dt = max(0.0, now - self._usage_at)
        self._usage_at = now
        decay = math.pow(0.5, dt / USAGE_HALF_LIFE_S)
        for key in self.usage:
            self.usage[key] *= decay
        for j in self.jobs.values():
            if j.state is JobState.RUNNING:
                self.usage[(ConsumerPath(j.consumer), j.user)] += dt * j.gpus_min

    def held_slots(self) -> set[GpuSlot]:
        return {s for j in self.jobs.values() for s in _slots(j)}

    # -- facts from users ---------------------------------------------------

    def submit(self, job: JobRecord, also: Callable[[JobRecord], None] | None = None) -> JobRecord:
        """Queue a job. `also` writes more records in the job's own transaction once
        the job has its id (an experiment's trial row: both or neither)."""
        assert self.policy is not None
        error = core.check_submission(
            self.policy, self.cluster_shape(), job.consumer, job.user, job.gpus_min, job.gpus_max
        )
        if error:
            raise SubmitError(error)
        self._queue(job, self.clock())
        with self.store.transaction():
            self.store.insert_job(job)
            if also is not None:
                also(job)
        self.jobs[job.id] = job
        self.notify(job)
        return job

    def submit_many(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """All of these jobs in one transaction, or none: a refused one refuses the
        batch, and the error names it ("job I of N", I from 0)."""
        assert self.policy is not None
        shape = self.cluster_shape()
        for i, job in enumerate(jobs):
            error = core.check_submission(
                self.policy, shape, job.consumer, job.user, job.gpus_min, job.gpus_max
            )
            if error:
                raise SubmitError(f"job {i} of {len(jobs)}: {error}")
        now = self.clock()
        with self.store.transaction():
            for job in jobs:
                self._queue(job, now)
                self.store.insert_job(job)
        for job in jobs:  # visible only once committed
            self.jobs[job.id] = job
            self.notify(job)
        return jobs

    @staticmethod
    def _queue(job: JobRecord, now: float) -> None:
        job.state = JobState.PENDING
        job.submit_time = now
        job.reason = "submitted; waiting for the next scheduling cycle"

    def cancel(self, job_id: int, user: str) -> tuple[JobRecord, Outbox]:
        """Cancel: a waiting job ends now; a running one is asked to stop (SIGTERM,
        its consumer's grace, SIGKILL) and ends when its agents report the exit."""
        job = self.jobs.get(job_id)
        if job is None:
            ended = self.store.load_job(job_id)
            if ended is None:
                raise KeyError(job_id)
            return ended, []  # already ended: nothing to do
        who = f"by {user}" if user else ""
        if job.state.waiting:
            self.finish(job, JobState.CANCELLED, None, f"cancelled {who} while waiting".strip())
            return job, []
        job.cancel_requested = True
        job.reason = f"cancel requested {who}; stopping".strip()
        now = self.clock()
        self.store.save_job(job, EventRecord(now, job.id, "cancel-requested", job.reason))
        self.notify(job)
        return job, self.stop_commands(job, job.reason)

    def stop_commands(self, job: JobRecord, reason: str) -> Outbox:
        grace = self.grace_of(job)
        return [
            (p.node, StopPart(job.id, job.attempt, grace, reason))
            for p in job.parts
            if p.phase is not PartPhase.EXITED
        ]

    def grace_of(self, job: JobRecord) -> float:
        if self.policy is None or job.consumer not in self.policy.consumers:
            return 30.0
        return self.policy.consumers[ConsumerPath(job.consumer)].grace_s

    # -- endings ------------------------------------------------------------

    def finish(self, job: JobRecord, state: JobState, exit_code: int | None, reason: str) -> None:
        job.state = state
        job.exit_code = exit_code
        job.end_time = self.clock()
        job.reason = reason
        self.store.save_job(job, EventRecord(job.end_time, job.id, state.value.lower(), reason))
        self.jobs.pop(job.id, None)
        self.notify(job)

    def notify(self, job: JobRecord) -> None:
        for listener in list(self.listeners):
            listener(job)


def _slots(job: JobRecord) -> list[GpuSlot]:
    return [GpuSlot(NodeName(p.node), i) for p in job.parts for i in p.gpu_indices]


def _core_job(job: JobRecord) -> core.Job:
    running = job.state is JobState.RUNNING
    anchor = next(
        (
            GpuSlot(NodeName(p.node), gpu)
            for p in job.parts
            for gpu, w in p.workers.items()
            if w == 0
        ),
        None,
    )
    failing = any(p.phase is PartPhase.EXITED and p.exit_code != 0 for p in job.parts)
    return core.Job(
        id=JobId(job.id),
        consumer=ConsumerPath(job.consumer),
        user=job.user,
        gpus_min=job.gpus_min,
        gpus_max=job.gpus_max,
        priority=job.priority,
        submit_seq=job.id,
        phase=core.JobPhase.RUNNING if running else core.JobPhase.PENDING,
        held=tuple(_slots(job)) if running else (),
        started_at=job.start_time,
        anchor=anchor,
        releasing=tuple(GpuSlot(NodeName(p.node), i) for p in job.parts for i in p.releasing),
        stopping=running and (job.cancel_requested or job.preempting or failing),
        release_deadline=job.release_deadline,
    )
