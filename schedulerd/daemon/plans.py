"""Committing a plan: starts, grows, shrinks and preemptions become records (one
SQLite transaction) and commands for the agents. Parts of a plan that went stale
while it was computed (a job cancelled, a node gone, a GPU taken) are dropped;
the next cycle sees the new facts."""

from __future__ import annotations

from collections import defaultdict

from schedulerd import core
from schedulerd.core import GpuSlot, NodeName
from schedulerd.daemon.commands import Outbox, ResizePart, StartPart
from schedulerd.daemon.state import ClusterState
from schedulerd.store import EventRecord, JobRecord, JobState, PartPhase, PartRecord

DEFAULT_STORE_PORTS = range(29400, 30000)


def apply_plan(
    state: ClusterState, plan: core.Plan, ports: range = DEFAULT_STORE_PORTS
) -> tuple[list[JobRecord], Outbox]:
    now = state.clock()
    held = state.held_slots()
    out: Outbox = []
    changed: list[tuple[JobRecord, EventRecord]] = []
    started: list[JobRecord] = []

    for start in plan.starts:
        job = state.jobs.get(start.job_id)
        if job is None or not job.state.waiting or not _usable(state, start.slots, held):
            continue
        held.update(start.slots)
        job.parts = _parts(state, job, start.slots)
        if job.elastic:
            _assign_workers(job, job.parts)
            job.store_address = _store_address(state, job, ports)
        job.state = JobState.RUNNING
        job.start_time = now
        job.reason = start.reason
        changed.append((job, EventRecord(now, job.id, "started", start.reason)))
        started.append(job)
        out += [(p.node, StartPart(job, p)) for p in job.parts]

    for preempt in plan.preemptions:
        job = state.jobs.get(preempt.job_id)
        if job is None or job.state is not JobState.RUNNING or job.preempting:
            continue
        grace = state.grace_of(job)
        job.preempting = True
        job.release_deadline = now + grace
        job.reason = preempt.reason
        event = f"{preempt.reason}; grace {grace:g} s"
        changed.append((job, EventRecord(now, job.id, "preempt-requested", event)))
        out += state.stop_commands(job, preempt.reason)

    for shrink in plan.shrinks:
        job = state.jobs.get(shrink.job_id)
        if job is None or job.state is not JobState.RUNNING or job.preempting:
            continue
        grace = state.grace_of(job)
        by_node = _by_node(shrink.slots)
        size = sum(len(p.gpu_indices) - len(p.releasing) for p in job.parts)
        for part in job.parts:
            release = [i for i in by_node.get(part.node, []) if i in part.gpu_indices]
            if release:
                part.releasing = sorted(set(part.releasing) | set(release))
                out.append(
                    (
                        part.node,
                        ResizePart(job.id, job.attempt, tuple(release), grace, (), shrink.reason),
                    )
                )
        job.release_deadline = now + grace
        text = f"shrinking {size} -> {size - len(shrink.slots)} GPUs: {shrink.reason}"
        changed.append((job, EventRecord(now, job.id, "shrink-requested", text)))

    for grow in plan.grows:
        job = state.jobs.get(grow.job_id)
        if job is None or job.state is not JobState.RUNNING or not _usable(state, grow.slots, held):
            continue
        held.update(grow.slots)
        size = sum(len(p.gpu_indices) for p in job.parts)
        for node, indices in _by_node(grow.slots).items():
            existing = next(
                (p for p in job.parts if p.node == node and p.phase is not PartPhase.EXITED), None
            )
            if existing is None:  # the job reaches a new node: a new part of joiners
                part = _parts(state, job, tuple(GpuSlot(NodeName(node), i) for i in indices))[0]
                part.node_rank = 1 + max((p.node_rank for p in job.parts), default=-1)
                job.parts.append(part)
                _assign_workers(job, [part], indices)
                out.append((node, StartPart(job, part)))  # joiners: ids >= min
            else:
                part = existing
                uuids = {g.index: g.uuid for g in state.nodes[node].gpus}
                part.gpu_indices += indices
                part.gpu_uuids += [uuids[i] for i in indices]
                added = _assign_workers(job, [part], indices)
                out.append((node, ResizePart(job.id, job.attempt, (), 0.0, added, grow.reason)))
        text = f"growing {size} -> {size + len(grow.slots)} GPUs: {grow.reason}"
        changed.append((job, EventRecord(now, job.id, "grown", text)))

    if changed:
        state.store.save_jobs(changed)
    for job_id, reason in plan.pending_reasons.items():
        job = state.jobs.get(job_id)
        if job is not None and job.state.waiting:
            job.reason = reason
    state.consumer_states = dict(plan.consumers)
    for job, _ in changed:
        state.notify(job)
    return started, out


def _usable(state: ClusterState, slots: tuple[GpuSlot, ...], held: set[GpuSlot]) -> bool:
    return not any(s in held for s in slots) and all(
        s.node in state.nodes and state.schedulable(state.nodes[s.node]) for s in slots
    )


def _by_node(slots: tuple[GpuSlot, ...]) -> dict[str, list[int]]:
    by_node: dict[str, list[int]] = defaultdict(list)
    for s in slots:
        by_node[s.node].append(s.index)
    return by_node


def _parts(state: ClusterState, job: JobRecord, slots: tuple[GpuSlot, ...]) -> list[PartRecord]:
    parts = []
    for rank, (node, indices) in enumerate(_by_node(slots).items()):
        uuids = {g.index: g.uuid for g in state.nodes[node].gpus}
        parts.append(
            PartRecord(job.id, job.attempt, node, rank, indices, [uuids[i] for i in indices])
        )
    return parts


def _assign_workers(
    job: JobRecord, parts: list[PartRecord], indices: list[int] | None = None
) -> tuple[tuple[int, int], ...]:
    """Fresh worker ids (never reused within an attempt) for the given GPUs."""
    added = []
    for part in parts:
        for gpu in indices if indices is not None else part.gpu_indices:
            part.workers[gpu] = job.next_worker_id
            added.append((job.next_worker_id, gpu))
            job.next_worker_id += 1
    return tuple(added)


def _store_address(state: ClusterState, job: JobRecord, ports: range) -> str:
    """Worker 0 hosts the job's store on the first part's node, on a port no
    other live elastic job there uses."""
    node = state.nodes[job.parts[0].node]
    host = node.address or "127.0.0.1"
    taken = {j.store_address for j in state.jobs.values() if j is not job and j.store_address}
    for port in ports:
        if f"{host}:{port}" not in taken:
            return f"{host}:{port}"
    raise RuntimeError(f"no free elastic store port on {node.name} in {ports}")


def requeue(state: ClusterState, job: JobRecord) -> None:
    """A preempted job's processes are gone: back to the queue with its place
    (its id is its queue order) and a new attempt (SEMANTICS: reclaim with grace)."""
    reason = job.reason
    job.attempt += 1
    job.state = JobState.PREEMPTED
    job.parts = []
    job.preempting = False
    job.release_deadline = None
    job.start_time = None
    job.store_address = ""
    job.next_worker_id = 0
    job.reason = f"preempted ({reason}); back in the queue, restart {job.attempt}"
    state.store.save_job(job, EventRecord(state.clock(), job.id, "preempted", reason))
    state.notify(job)
