"""Committing a plan: starts, grows, shrinks and preemptions become records (one
SQLite transaction) and commands for the agents. Parts of a plan that went stale
while it was computed (a job cancelled, a node gone, a GPU taken or fenced) are
dropped; the next cycle sees the new facts. Check, commit, then apply: the plan is
built on copies (daemon/change.py), and a failed write leaves memory untouched."""

from __future__ import annotations

import ipaddress
import random
from collections import defaultdict
from dataclasses import dataclass

from schedulerd import core
from schedulerd.core import GpuSlot, NodeName
from schedulerd.daemon.change import Change
from schedulerd.daemon.commands import Outbox, ResizePart
from schedulerd.daemon.metrics import shrink_cause
from schedulerd.daemon.state import ClusterState
from schedulerd.daemon.stops import begin_stop, owed_stops
from schedulerd.store import JobRecord, JobState, PartPhase, PartRecord

# Clear of torchrun's own defaults (29400 for its rendezvous, 29500 for MASTER_PORT), which
# single-node jobs use without asking us.
DEFAULT_STORE_PORTS = range(29600, 30000)
_draw = random.SystemRandom()  # store ports (_store_address)


def apply_plan(
    state: ClusterState, plan: core.Plan, ports: range = DEFAULT_STORE_PORTS
) -> tuple[list[JobRecord], Outbox]:
    """Commit what is still valid of `plan`; (jobs started, commands to send).
    Raises StoreUnavailable, with nothing changed, when the store cannot be written."""
    built = _plan_change(state, plan, ports)
    out = built.ch.commit()
    return _applied(state, plan, built), out


async def apply_plan_async(
    state: ClusterState, plan: core.Plan, ports: range = DEFAULT_STORE_PORTS
) -> tuple[list[JobRecord], Outbox]:
    """`apply_plan`, its commit shared with concurrent writes (store/group.py)."""
    await state.writer.changes_idle()
    built = _plan_change(state, plan, ports)
    out = await built.ch.commit_async()
    return _applied(state, plan, built), out


@dataclass
class _Built:
    """A plan's change, built and not yet committed, with what the metrics want after."""

    ch: Change
    started: list[JobRecord]
    preempted: list[tuple[str, str]]
    shrunk: list[tuple[str, str]]
    grown: list[str]


def _plan_change(state: ClusterState, plan: core.Plan, ports: range) -> _Built:
    ch = Change(state)
    now = ch.now
    # Held GPUs of the nodes the plan gives GPUs on only, not of the whole cluster.
    given = {s.node for st in plan.starts for s in st.slots}
    given.update(s.node for g in plan.grows for s in g.slots)
    held = state.held_slots(given)
    taken_ports: set[str] | None = None  # read on the first start that needs a port
    started: list[JobRecord] = []
    # Sent, for the metrics once committed: (consumer, cause) of each preemption and
    # shrink, and the consumer of each grow.
    preempted: list[tuple[str, str]] = []
    shrunk: list[tuple[str, str]] = []
    grown: list[str] = []

    for start in plan.starts:
        live = state.jobs.get(start.job_id)
        if live is None or not live.state.waiting or not _usable(state, start.slots, held):
            continue
        held.update(start.slots)
        job = ch.job(live)
        job.parts = _parts(state, job, start.slots)
        if job.elastic:
            _assign_workers(job, job.parts)
        if job.elastic or len(job.parts) > 1:
            # Where its processes meet: the elastic store, or a rigid job's rendezvous
            # on node rank 0 (MASTER_ADDR/MASTER_PORT).
            if taken_ports is None:
                taken_ports = {j.store_address for j in state.jobs.values() if j.store_address}
            job.store_address = _store_address(state, job, ports, taken_ports)
            taken_ports.add(job.store_address)
        job.state = JobState.RUNNING
        job.start_time = now
        job.reason = start.reason
        ch.event(job.id, "started", start.reason)
        started.append(live)
        ch.out += [(p.node, state.start_part(job, p)) for p in job.parts]

    for preempt in plan.preemptions:
        live = state.jobs.get(preempt.job_id)
        if live is None or live.state is not JobState.RUNNING or live.preempting:
            continue
        job = ch.job(live)
        job.preempting, job.requeue_cause = True, "preempted"
        job.reason = preempt.reason
        begin_stop(state, job, now)
        ch.event(job.id, "preempt-requested", f"{preempt.reason}; grace {state.grace_of(job):g} s")
        ch.out += owed_stops(state, job, now)
        preempted.append((job.consumer, preempt.cause))

    for shrink in plan.shrinks:
        live = state.jobs.get(shrink.job_id)
        if live is None or live.state is not JobState.RUNNING or live.preempting:
            continue
        job = ch.job(live)
        grace = state.grace_of(job)
        by_node = _by_node(shrink.slots)
        size = sum(len(p.gpu_indices) - len(p.releasing) for p in job.parts)
        for part in job.parts:
            release = [i for i in by_node.get(part.node, []) if i in part.gpu_indices]
            if release:
                part.releasing = sorted(set(part.releasing) | set(release))
                ch.out.append(
                    (
                        part.node,
                        ResizePart(job.id, job.attempt, tuple(release), grace, (), shrink.reason),
                    )
                )
        job.release_deadline = now + grace
        text = f"shrinking {size} -> {size - len(shrink.slots)} GPUs: {shrink.reason}"
        ch.event(job.id, "shrink-requested", text)
        shrunk.append((job.consumer, shrink_cause(shrink.reason)))

    for grow in plan.grows:
        live = state.jobs.get(grow.job_id)
        if (
            live is None
            or live.state is not JobState.RUNNING
            or live.ending  # SEMANTICS: a finished training is never grown again
            or not _usable(state, grow.slots, held)
        ):
            continue
        held.update(grow.slots)
        job = ch.job(live)
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
                ch.out.append((node, state.start_part(job, part)))  # joiners: ids >= min
            else:
                part = existing
                uuids = {g.index: g.uuid for g in state.nodes[node].gpus}
                part.gpu_indices += indices
                part.gpu_uuids += [uuids[i] for i in indices]
                added = _assign_workers(job, [part], indices)
                ch.out.append((node, ResizePart(job.id, job.attempt, (), 0.0, added, grow.reason)))
        ch.event(job.id, "grown", f"growing {size} -> {size + len(grow.slots)} GPUs: {grow.reason}")
        grown.append(job.consumer)

    return _Built(ch, started, preempted, shrunk, grown)


def _applied(state: ClusterState, plan: core.Plan, built: _Built) -> list[JobRecord]:
    """After the commit: the metrics, and what memory keeps but the store does not."""
    now = built.ch.now
    state.metrics.plan_applied(built.preempted, built.shrunk, built.grown)
    # Not stored, nor written on every waiting job: a waiting job's reason is the last
    # plan's, worded when someone asks (ClusterState.reason_of).
    state.waiting_reasons = plan.pending_reasons
    # For /metrics: the waiting jobs by kind of reason, counted when a scrape first asks
    # after this cycle (not at every scrape, nor every cycle), a reason per leaf and size
    # rather than per job.
    state.metrics.waiting_plan(plan.pending_reasons, state.jobs)
    state.consumer_states = dict(plan.consumers)
    state.metrics.consumers_decided(plan.consumers, now)
    state.pool_states = dict(plan.pools)
    return built.started


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
    # Node rank 0 hosts where the parts meet (MASTER_ADDR, the elastic store): a node
    # that others can reach, not one known by a loopback address (an agent on the
    # daemon's own machine, talking to it over 127.0.0.1), when the job has one.
    nodes = sorted(_by_node(slots).items(), key=lambda kv: _loopback(state.nodes[kv[0]].address))
    for rank, (node, indices) in enumerate(nodes):
        uuids = {g.index: g.uuid for g in state.nodes[node].gpus}
        parts.append(
            PartRecord(job.id, job.attempt, node, rank, indices, [uuids[i] for i in indices])
        )
    return parts


def _loopback(address: str) -> bool:
    try:
        return not address or ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:  # a host name
        return address == "localhost"


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


def _store_address(state: ClusterState, job: JobRecord, ports: range, taken: set[str]) -> str:
    """Worker 0 hosts the job's store (or a multi-node job's rank 0 its rendezvous) on
    the first part's node, on a port no other live job there was given: one drawn at
    random, so that the next job's port cannot be guessed and taken first, and two
    daemons on one machine (tests) seldom meet. Whether something else holds the port
    on the node is not known here (docs/deploy.md says to keep the range to jobs)."""
    node = state.nodes[job.parts[0].node]
    host = node.address or "127.0.0.1"
    free = [port for port in ports if f"{host}:{port}" not in taken]
    if not free:
        raise RuntimeError(f"no free store port on {node.name} in {ports}")
    return f"{host}:{_draw.choice(free)}"
