"""What decides in a simulated run: schedulerd's own core, or a baseline.

Every scheduler takes the same snapshot and returns the core's `Plan`, so the
engine applies all of them the same way. The baselines place jobs with the core's
own placement (`FreeGpus`), so that they differ from schedulerd in who goes first,
not in where jobs land.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from schedulerd.core import ConsumerPath, JobPhase, Plan, Policy, Snapshot, Start, decide
from schedulerd.core.placement import FreeGpus


class Scheduler(Protocol):
    name: str
    # True when the plan may change with time alone (min_runtime running out makes
    # a job preemptible), so the engine must run a cycle even if nothing happened.
    time_sensitive: bool

    def plan(self, snapshot: Snapshot, now: float) -> Plan: ...

    def admits(self, consumer: str, gpus: int) -> bool:
        """False for a job this scheduler can never run (refused at submit)."""
        ...


class FairShare:
    """schedulerd: `decide()`, exactly as the daemon calls it."""

    name = "schedulerd"
    time_sensitive = True

    def __init__(self, policy: Policy, cluster_gpus: int) -> None:
        self.policy = policy
        self.cluster_gpus = cluster_gpus

    def plan(self, snapshot: Snapshot, now: float) -> Plan:
        return decide(snapshot, self.policy, now)

    def admits(self, consumer: str, gpus: int) -> bool:
        return gpus <= self.cluster_gpus


class Fifo:
    """One queue in submit order, no fairness: the oldest job starts first, and a
    job that does not fit blocks every job behind it (no backfill)."""

    name = "FIFO"
    time_sensitive = False

    def __init__(self, cluster_gpus: int) -> None:
        self.cluster_gpus = cluster_gpus

    def plan(self, snapshot: Snapshot, now: float) -> Plan:
        running = [j for j in snapshot.jobs if j.phase is JobPhase.RUNNING]
        free = FreeGpus(snapshot.nodes, (s for j in running for s in j.held))
        starts = []
        for job in sorted(
            (j for j in snapshot.jobs if j.phase is JobPhase.PENDING), key=lambda j: j.submit_seq
        ):
            slots = free.place(job.gpus)
            if slots is None:
                break
            starts.append(Start(job.id, slots, "fifo"))
        return Plan(starts=tuple(starts), pending_reasons={}, consumers={})

    def admits(self, consumer: str, gpus: int) -> bool:
        return gpus <= self.cluster_gpus


class StaticPartitions:
    """Each consumer owns a fixed number of GPUs and never uses more: no lending,
    no borrowing. Inside its partition a consumer runs its jobs in submit order,
    and a smaller job may start past a larger one that does not fit (backfill)."""

    name = "static partitions"
    time_sensitive = False

    def __init__(self, quota: Mapping[str, int]) -> None:
        self.quota = dict(quota)

    def plan(self, snapshot: Snapshot, now: float) -> Plan:
        used: dict[ConsumerPath, int] = {}
        running = [j for j in snapshot.jobs if j.phase is JobPhase.RUNNING]
        for j in running:
            used[j.consumer] = used.get(j.consumer, 0) + len(j.held)
        free = FreeGpus(snapshot.nodes, (s for j in running for s in j.held))
        starts = []
        for job in sorted(
            (j for j in snapshot.jobs if j.phase is JobPhase.PENDING), key=lambda j: j.submit_seq
        ):
            have = used.get(job.consumer, 0)
            if have + job.gpus > self.quota.get(job.consumer, 0):
                continue
            slots = free.place(job.gpus)
            if slots is None:
                continue
            used[job.consumer] = have + job.gpus
            starts.append(Start(job.id, slots, "partition"))
        return Plan(starts=tuple(starts), pending_reasons={}, consumers={})

    def admits(self, consumer: str, gpus: int) -> bool:
        return gpus <= self.quota.get(consumer, 0)
