"""The daemon's live state, written through to the store.

Every change is committed to SQLite before it is visible or acknowledged, so the
store can always rebuild this object (`ClusterState.load`). Only the scheduling
loop applies plans; servicers record facts (submissions, reports) here.
"""

from __future__ import annotations

import enum
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from itertools import islice

from schedulerd import core
from schedulerd.core import ConsumerPath, ConsumerState, GpuSlot, JobId, NodeName
from schedulerd.core.reasons import reason_for
from schedulerd.daemon.change import Change
from schedulerd.daemon.commands import Outbox, StartPart
from schedulerd.daemon.endings import end_job
from schedulerd.daemon.metrics import DaemonMetrics
from schedulerd.daemon.partindex import PartsByNode
from schedulerd.daemon.stops import begin_stop, must_stop, owed_stops
from schedulerd.store import (
    JobRecord,
    JobState,
    NodeRecord,
    PartRecord,
    PolicyRecord,
    Store,
    StoreUnavailable,
)
from schedulerd.store.group import GroupWriter
from schedulerd.store.records import ARRAY_FIRST

log = logging.getLogger(__name__)

# Decayed usage is written to the store at most this often (and at shutdown): a SIGKILL
# loses at most this much of it; a write per cycle would cost the loop.
USAGE_SAVE_S = 10.0
# After a restart, jobs the store shows running are counted as running for at most this
# long of the outage: an agent without its daemon stops its jobs after half the node
# timeout (docs/fencing.md; 60 s by default), and a restart within that adopts them.
OUTAGE_CREDIT_S = 120.0
# Heartbeats missed before a node is UNREACHABLE (nothing new lands there). 2.5, not 3:
# the last heartbeat came up to one interval before the agent froze, and a test (and an
# operator) expects UNREACHABLE within three intervals of it.
MISSED_HEARTBEATS = 2.5


class Liveness(enum.Enum):
    UP = "up"  # connected, heartbeats arriving
    UNREACHABLE = "unreachable"  # silent for a few heartbeats, or disconnected
    DOWN = "down"  # silent past the node timeout: its jobs were requeued as lost


class SubmitError(ValueError):
    """A submission refused with a reason a person can act on."""


class ClusterState:
    def __init__(self, store: Store, clock: Callable[[], float], heartbeat_s: float = 2.0) -> None:
        self.store = store
        # Concurrent submissions, reports and plans share its transactions (store/group.py).
        self.writer = GroupWriter(store)
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.jobs: dict[int, JobRecord] = {}  # pending and running only
        self.parts_by_node = PartsByNode()  # kept with `jobs` (Change._apply, load)
        self.nodes: dict[str, NodeRecord] = {}
        self.connected: set[str] = set()
        # Agents that said they are shutting down: nothing new lands there until they
        # register again (in memory: a restarted daemon sees them reconnect or not).
        self.stopping_nodes: set[str] = set()
        self.policy: core.Policy | None = None
        self.policy_record: PolicyRecord | None = None
        self.consumer_states: dict[ConsumerPath, ConsumerState] = {}
        # Per pool, when the cluster has several (core/pools.py).
        self.pool_states: dict[str, Mapping[ConsumerPath, ConsumerState]] = {}
        self.usage: dict[tuple[ConsumerPath, str], float] = {}
        self._usage_at = clock()
        self._usage_saved_at = self._usage_at
        self.listeners: list[Callable[[JobRecord], None]] = []
        # The core's view of each job, kept from cycle to cycle and built again only
        # for the jobs changed since (notify: every committed change and submission
        # passes there), so that a snapshot costs what changed, not every job held.
        self._views: dict[int, core.Job] = {}
        self._changed: set[int] = set()
        self._generation = 0  # of the last snapshot, for its core.Changes
        self._running: dict[int, core.Job] = {}  # the views of running jobs
        self.metrics = DaemonMetrics()  # counters and histograms (docs/metrics.md)
        # The last plan's reasons of the jobs it left waiting, worded when someone asks
        # (reason_of): a cycle no longer writes tens of thousands of reasons.
        self.waiting_reasons: Mapping[JobId, str] = {}

    # -- loading and policy -------------------------------------------------

    def load(self) -> None:
        now = self.clock()
        for job in self.store.load_jobs(active_only=True):
            self.jobs[job.id] = job
        self.parts_by_node.rebuild(self.jobs.values())
        for node in self.store.load_nodes():
            # Nobody is connected yet: the node timeout counts from now.
            node.last_seen = now
            self.nodes[node.name] = node
        self.policy_record = self.store.latest_policy()
        kept, at = self.store.load_usage()
        self.usage = {(ConsumerPath(c), u): used for (c, u), used in kept.items()}
        self._usage_at = now
        if at is not None and at < now:
            # The jobs that ran while the daemon was away count, but only for as long as
            # their agents keep them without a daemon (about half the node timeout, at
            # most OUTAGE_CREDIT_S): after a long outage they were stopped long ago.
            ran = min(now - at, OUTAGE_CREDIT_S)
            half_life = 3600.0 if self.policy is None else self.policy.usage_half_life_s
            self.usage = core.decay_usage(self.usage, self._held_now(), ran, half_life)
            self.usage = core.decay_usage(self.usage, {}, now - at - ran, half_life)

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

    def liveness(self, node: NodeRecord) -> Liveness:
        """From heartbeats, not from TCP: a frozen agent keeps its stream open."""
        if node.down:
            return Liveness.DOWN
        silent = self.clock() - node.last_seen
        if node.name not in self.connected or silent > MISSED_HEARTBEATS * self.heartbeat_s:
            return Liveness.UNREACHABLE
        return Liveness.UP

    def schedulable(self, node: NodeRecord) -> bool:
        return (
            self.liveness(node) is Liveness.UP
            and not node.drained
            and node.name not in self.stopping_nodes
        )

    def snapshot(self) -> core.Snapshot:
        jobs, changed = self._job_views()
        # What changed since the last snapshot (core.Changes), so that the cycle's cache
        # need not compare every job; none after a resync (jobs came without a change).
        self._generation += 1
        changes = (
            None
            if changed is None
            else core.Changes(self._generation - 1, self._generation, changed)
        )
        # GPUs held now, per (consumer, user), from the running jobs' views.
        held: dict[tuple[ConsumerPath, str], float] = defaultdict(float)
        for view in self._running.values():
            held[(view.consumer, view.user)] += len(view.held)
        self._decay_usage(held)
        # Fenced GPUs are not offered: their last holder may still run (docs/fencing.md).
        nodes = tuple(
            core.Node(NodeName(n.name), _offered(n), self.schedulable(n), n.pool, n.gpu_type)
            for n in self.nodes.values()
        )
        return core.Snapshot(nodes=nodes, jobs=jobs, user_usage=dict(self.usage), changes=changes)

    def _job_views(self) -> tuple[tuple[core.Job, ...], dict[JobId, core.Job | None] | None]:
        """The core's view of every job, in the order of `jobs`, and the views changed
        since the last call (None for one gone), or None when views were resynced.

        `_views` is kept in the order of `jobs` (a changed job keeps its place in both;
        a new one comes last in both), so that the tuple is one C-level copy of its
        values: looking every job up again took ~0.6 ms a cycle at 12,000 queued."""
        views, jobs = self._views, self.jobs
        changed, self._changed = self._changed, set()
        delta: dict[JobId, core.Job | None] = {}
        new: list[int] = []
        for job_id in changed:
            job = jobs.get(job_id)
            if job is None:
                views.pop(job_id, None)
                self._running.pop(job_id, None)
                delta[JobId(job_id)] = None
            else:
                view = _core_job(job)
                if job_id in views:
                    self._keep(job_id, view)
                else:
                    new.append(job_id)
                delta[JobId(job_id)] = view
        # New jobs are the last ones of `jobs`: their views go last, in the same order.
        tail = list(islice(reversed(jobs), len(new)))
        in_order = set(tail) == set(new)
        for job_id in reversed(tail) if in_order else new:
            came = delta[JobId(job_id)]
            assert came is not None
            self._keep(job_id, came)
        if not in_order or len(views) != len(jobs):
            self._resync_views()
            return tuple(self._views.values()), None
        return tuple(views.values()), delta

    def _resync_views(self) -> None:
        """Views in the order of `jobs`: built for jobs that came without a change
        (loaded at start), dropped for jobs that left without one."""
        old, jobs = self._views, self.jobs
        self._views = {}
        for job_id, job in jobs.items():
            view = old.get(job_id)
            if view is None:
                self._keep(job_id, _core_job(job))
            else:
                self._views[job_id] = view
        for gone in old.keys() - jobs.keys():
            self._running.pop(gone, None)

    def _keep(self, job_id: int, view: core.Job) -> None:
        self._views[job_id] = view
        if view.phase is core.JobPhase.RUNNING:
            self._running[job_id] = view
        else:
            self._running.pop(job_id, None)

    def pool_gpus(self) -> dict[str, int]:
        """GPUs of schedulable nodes, per pool."""
        gpus: dict[str, int] = defaultdict(int)
        for n in self.nodes.values():
            if self.schedulable(n):
                gpus[n.pool] += len(n.gpus)
        return dict(gpus)

    def cluster_shape(self) -> core.ClusterShape:
        nodes = self.nodes.values()
        return core.ClusterShape(
            tuple(len(n.gpus) for n in nodes), tuple((n.pool, n.gpu_type) for n in nodes)
        )

    def _decay_usage(self, held: Mapping[tuple[ConsumerPath, str], float]) -> None:
        """Usage up to now (core/usage.py, the simulator's function too), and kept in
        the store every USAGE_SAVE_S; `held`: the GPUs held now."""
        now = self.clock()
        half_life = self.policy.usage_half_life_s if self.policy else 3600.0
        self.usage = core.decay_usage(self.usage, held, now - self._usage_at, half_life)
        self._usage_at = now
        if abs(now - self._usage_saved_at) >= USAGE_SAVE_S:  # a clock set back: save too
            self.save_usage()

    def _held_now(self) -> dict[tuple[ConsumerPath, str], float]:
        held: dict[tuple[ConsumerPath, str], float] = defaultdict(float)
        running = JobState.RUNNING
        for j in self.jobs.values():
            if j.parts and j.state is running:  # waiting jobs have no parts: skipped first
                held[(ConsumerPath(j.consumer), j.user)] += sum(len(p.gpu_indices) for p in j.parts)
        return held

    def save_usage(self) -> None:
        """Write usage as of its last decay; a store that cannot be written keeps it in
        memory (the next save retries)."""
        try:
            self.store.save_usage(
                {(str(c), u): v for (c, u), v in self.usage.items()}, self._usage_at
            )
        except StoreUnavailable:
            return
        self._usage_saved_at = self._usage_at

    def held_slots(self, on: Collection[str] | None = None) -> set[GpuSlot]:
        """GPUs held by a job, or fenced: none of them may be given to a new part. `on`:
        only those of these nodes (a plan's starts and grows need no others)."""
        if on is None:
            held = {s for j in self.jobs.values() for s in _slots(j)}
            nodes = list(self.nodes.values())
        else:
            # The jobs with a part on these nodes only (parts_by_node), not every job:
            # a cycle that starts nothing, behind a long queue, reads none.
            held = {
                GpuSlot(NodeName(p.node), i)
                for n in on
                for j in self.jobs_on(n)
                for p in j.parts
                if p.node == n
                for i in p.gpu_indices
            }
            nodes = [self.nodes[n] for n in on if n in self.nodes]
        for n in nodes:
            held.update(GpuSlot(NodeName(n.name), f.gpu_index) for f in n.fences)
        return held

    def jobs_on(self, node: str) -> list[JobRecord]:
        """The live jobs with a part on `node`, in id order (parts_by_node)."""
        return [self.jobs[i] for i in self.parts_by_node.jobs_on(node) if i in self.jobs]

    def holding_jobs(self) -> list[JobRecord]:
        """The live jobs with parts (every running one), in id order; not the queue."""
        return [self.jobs[i] for i in self.parts_by_node.job_ids() if i in self.jobs]

    # -- facts from users ---------------------------------------------------

    def submit(self, job: JobRecord, also: Callable[[JobRecord], None] | None = None) -> JobRecord:
        """Queue a job. `also` writes more records in the job's own transaction once
        the job has its id (an experiment's trial row: both or neither)."""
        self._check_submission(job)
        self._queue(job, self.clock())
        with self.store.transaction():
            self.store.insert_job(job)
            if also is not None:
                also(job)
        self._submitted(job)
        return job

    async def submit_async(self, job: JobRecord) -> JobRecord:
        """`submit`, its commit shared with whatever else is queued for the disk (a unary
        SubmitJob among many: store/group.py). A new job is a pure insert: no pending
        change can touch it, and it reads no live record but the policy's shape."""
        self._check_submission(job)
        self._queue(job, self.clock())
        await self.writer.submit(lambda store: store.insert_job(job), lambda: self._submitted(job))
        return job

    def _check_submission(self, job: JobRecord) -> None:
        assert self.policy is not None
        error = core.check_submission(
            self.policy,
            self.cluster_shape(),
            job.consumer,
            job.user,
            job.gpus_min,
            job.gpus_max,
            job.pool,
        )
        if error:
            raise SubmitError(error)

    def _submitted(self, job: JobRecord) -> None:
        """Committed: the job is visible, counted and watched."""
        self.jobs[job.id] = job
        self.metrics.submitted_jobs([job])
        self.notify(job)

    def submission_problem(
        self, consumer: str, user: str, gpus_min: int, gpus_max: int
    ) -> tuple[str, str] | None:
        """Whether jobs of this shape could be queued at all (the submit path's check),
        for a request that will submit them later (an experiment's trials, a service's
        replicas): None, or (what it is about: "user", "consumer" or "gpus", why)."""
        if self.policy is None:
            return None
        error = core.check_submission(
            self.policy, self.cluster_shape(), consumer, user, gpus_min, gpus_max
        )
        if not error:
            return None
        about = "user" if error.startswith("user ") else "consumer"
        if "can never fit" in error or "GPU" in error.split(":")[0]:
            about = "gpus"
        return about, error

    def submit_many(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """All of these jobs in one transaction, or none: a refused one refuses the
        batch, and the error names it ("job I of N", I from 0)."""
        assert self.policy is not None
        shape = self.cluster_shape()
        for i, job in enumerate(jobs):
            error = core.check_submission(
                self.policy, shape, job.consumer, job.user, job.gpus_min, job.gpus_max, job.pool
            )
            if error:
                raise SubmitError(f"job {i} of {len(jobs)}: {error}")
        now = self.clock()
        with self.store.transaction():
            for job in jobs:
                self._queue(job, now)
                if job.array_id == ARRAY_FIRST and job is not jobs[0]:  # docs/arrays.md
                    job.array_id = jobs[0].array_id  # the first element's id, once stored
                self.store.insert_job(job)
        self.metrics.submitted_jobs(jobs)
        for job in jobs:  # visible only once committed
            self.jobs[job.id] = job
            self.notify(job)
        return jobs

    @staticmethod
    def _queue(job: JobRecord, now: float) -> None:
        job.state = JobState.PENDING
        job.submit_time = now
        job.queued_at = now
        job.reason = "submitted; waiting for the next scheduling cycle"

    def cancel(self, job_id: int, user: str, timed_out: bool = False) -> tuple[JobRecord, Outbox]:
        """Cancel: a waiting job ends now; a running one is asked to stop (SIGTERM,
        its consumer's grace, SIGKILL) and ends when its agents report the exit, as
        CANCELLED, or TIMEOUT when `timed_out` (its time limit ran out: `user` then
        says so). Raises StoreUnavailable, changing nothing, when the store cannot be
        written."""
        self.writer.settle()  # a pending change applied first: it may end this very job
        job = self.jobs.get(job_id)
        if job is None:
            ended = self.store.load_job(job_id)
            if ended is None:
                raise KeyError(job_id)
            return ended, []  # already ended: nothing to do
        ch = Change(self)
        self._cancel_in(ch, job, user, timed_out)
        out = ch.commit()
        return job, out

    def cancel_many(self, job_ids: list[int], user: str) -> Outbox:
        """Cancel every one of these jobs still waiting or running (a job array's
        elements, docs/arrays.md) in one transaction; ended or unknown ones are passed
        over. Raises StoreUnavailable, changing nothing, when the store cannot be
        written."""
        ch = Change(self)
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is not None:
                self._cancel_in(ch, job, user, False)
        return ch.commit()

    def _cancel_in(self, ch: Change, job: JobRecord, user: str, timed_out: bool) -> None:
        who = f"by {user}" if user else ""
        copy = ch.job(job)
        if copy.state.waiting:
            end_job(ch, copy, JobState.CANCELLED, None, f"cancelled {who} while waiting".strip())
        elif not copy.cancel_requested:
            copy.cancel_requested = True
            copy.reason = f"cancel requested {who}; stopping".strip()
            if timed_out:
                copy.stop_cause = "timeout"
                copy.reason = f"{user}; stopping"
            begin_stop(self, copy, ch.now)
            ch.event(copy.id, "time-limit" if timed_out else "cancel-requested", copy.reason)
            ch.out += owed_stops(self, copy, ch.now)
        else:
            ch.out += owed_stops(self, copy, ch.now)  # asked again: repeat the stops

    def reason_of(self, job: JobRecord) -> str:
        """A job's reason as people see it: a waiting job's from the last cycle that
        decided it (worded now, core/reasons.py), else the record's own (submitted since,
        requeued since, or not waiting)."""
        if job.state.waiting and self.jobs.get(job.id) is job:
            text = reason_for(self.waiting_reasons, JobId(job.id), ConsumerPath(job.consumer))
            if text is not None:
                return text
        return job.reason

    def grace_of(self, job: JobRecord) -> float:
        if self.policy is None or job.consumer not in self.policy.consumers:
            return 30.0
        return self.policy.consumers[ConsumerPath(job.consumer)].grace_s

    def start_part(self, job: JobRecord, part: PartRecord) -> StartPart:
        """The command that starts `part`, with what the agent must know of the policy."""
        path = ConsumerPath(job.consumer)
        policy = self.policy
        root_ok = policy is not None and path in policy.consumers and policy.runs_as_root(path)
        return StartPart(job, part, root_ok and not job.vouched)

    def notify(self, job: JobRecord) -> None:
        """`job` changed (committed) or came in: its core view is built again."""
        self._changed.add(job.id)
        for listener in list(self.listeners):
            # A listener that raises (a bug in a watch or a controller) must not keep the
            # jobs applied after this one in the same change from being seen anew.
            try:
                listener(job)
            except Exception:
                log.exception("a listener of job %d failed", job.id)


def _offered(node: NodeRecord) -> tuple[int, ...]:
    if not node.fences:
        return tuple(g.index for g in node.gpus)
    fenced = node.fenced()
    return tuple(g.index for g in node.gpus if g.index not in fenced)


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
        # Its GPUs are on their way out: a stop is owed (one rule: daemon/stops.py), or
        # its training has ended.
        stopping=running and (must_stop(job) or job.ending),
        release_deadline=job.release_deadline,
        preemptions=job.preemptions,
        time_limit_s=job.time_limit_s,
        pool=job.pool or None,
        waiting_since=None if running else job.queued_at,
    )
