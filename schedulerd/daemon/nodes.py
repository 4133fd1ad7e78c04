"""What agents tell the daemon: registration, job reports, disconnection, and
the node timeout. Each function records the facts in the state (durably) and
returns the commands to send back."""

from __future__ import annotations

from dataclasses import dataclass

from schedulerd.daemon.commands import AckPart, Outbox, ResizePart, StartPart, StopPart
from schedulerd.daemon.plans import requeue
from schedulerd.daemon.state import ClusterState
from schedulerd.store import EventRecord, JobRecord, JobState, NodeRecord, PartPhase, PartRecord


@dataclass(frozen=True)
class PartReport:
    job_id: int
    attempt: int
    phase: str  # "running", "exited", "start_failed"
    exit_code: int = 0
    pid: int = 0
    message: str = ""
    gpu_indices: tuple[int, ...] = ()  # elastic parts: GPUs whose workers are alive


def register(state: ClusterState, node: NodeRecord, reports: list[PartReport]) -> Outbox:
    """An agent (re)connects with its GPUs and every job part it knows."""
    known = state.nodes.get(node.name)
    if known is not None:
        node.drained, node.drain_reason = known.drained, known.drain_reason
    node.down = False
    node.last_seen = state.clock()
    state.store.save_node(node)
    state.nodes[node.name] = node
    state.connected.add(node.name)

    out: Outbox = []
    reported = set()
    for r in reports:
        reported.add((r.job_id, r.attempt))
        out += report(state, node.name, r)
        out += _owed_resizes(state, node.name, r)
    # Parts the daemon placed here that the agent did not mention.
    for job in list(state.jobs.values()):
        for part in job.parts:
            if part.node != node.name or (job.id, job.attempt) in reported:
                continue
            if part.phase is PartPhase.ASSIGNED:
                # Committed but maybe never delivered (daemon restart): deliver
                # now; the agent ignores a start it already has.
                out.append((node.name, StartPart(job, part)))
            elif part.phase is PartPhase.RUNNING:
                out += _part_ended(
                    state, job, part, None, f"lost: the agent on {node.name} no longer has it"
                )
    return out


def _owed_resizes(state: ClusterState, node: str, r: PartReport) -> Outbox:
    """Resize commands an elastic part may have missed (sent while the agent was
    away, or committed just before a daemon crash): repeat the release of GPUs
    still running, and start the committed workers the agent does not have."""
    job = state.jobs.get(r.job_id)
    part = _part(job, node, r.attempt) if job is not None else None
    if job is None or part is None or not job.elastic or r.phase != "running":
        return []
    live = set(r.gpu_indices)
    release = tuple(i for i in part.releasing if i in live)
    add = tuple(
        (w, gpu)
        for gpu, w in sorted(part.workers.items())
        if gpu not in live and gpu not in part.releasing
    )
    if not release and not add:
        return []
    grace = max(0.0, (job.release_deadline or state.clock()) - state.clock())
    why = "repeated after the agent reconnected"
    return [(node, ResizePart(job.id, job.attempt, release, grace, add, why))]


def report(state: ClusterState, node: str, r: PartReport) -> Outbox:
    job = state.jobs.get(r.job_id)
    part = _part(job, node, r.attempt) if job is not None else None
    if job is None or part is None:
        # Ended, replaced by a newer attempt, or never ours: it must not run.
        if r.phase == "running":
            return [(node, StopPart(r.job_id, r.attempt, 0.0, "not known to the daemon"))]
        return [(node, AckPart(r.job_id, r.attempt))]
    out: Outbox = []
    if r.phase == "running":
        if part.phase is PartPhase.ASSIGNED:
            part.phase, part.pid = PartPhase.RUNNING, r.pid
            state.store.save_job(job)
        if job.elastic and part.releasing:
            gone = [i for i in part.releasing if i not in r.gpu_indices]
            if gone:
                _released(state, job, part, gone)
        failing = any(p.phase is PartPhase.EXITED and p.exit_code != 0 for p in job.parts)
        if job.cancel_requested or failing:
            # A stop may have been lost with an earlier connection: repeat it.
            out += state.stop_commands(job, job.reason)
        return out
    code = r.exit_code if r.phase == "exited" else 127
    why = r.message or (f"exited with {code}" if r.phase == "exited" else "could not start")
    out += _part_ended(state, job, part, code, why)
    out.append((node, AckPart(r.job_id, r.attempt)))  # after the durable write
    return out


def disconnect(state: ClusterState, node: str) -> None:
    state.connected.discard(node)
    if node in state.nodes:
        state.nodes[node].last_seen = state.clock()


def expire_nodes(state: ClusterState, node_timeout_s: float) -> Outbox:
    """Nodes gone longer than the timeout are down: their jobs fail, so that no
    job holds a GPU on a node that is down (SEMANTICS: invariants)."""
    now = state.clock()
    out: Outbox = []
    for node in state.nodes.values():
        if node.name in state.connected or node.down:
            continue
        if now - node.last_seen < node_timeout_s:
            continue
        node.down = True
        state.store.save_node(node)
        for job in list(state.jobs.values()):
            for part in job.parts:
                if part.node == node.name and part.phase is not PartPhase.EXITED:
                    why = f"node {node.name} lost: its agent was gone for {node_timeout_s:g} s"
                    out += _part_ended(state, job, part, None, why)
    return out


def _part(job: JobRecord, node: str, attempt: int) -> PartRecord | None:
    if job.attempt != attempt:
        return None
    return next((p for p in job.parts if p.node == node), None)


def _released(state: ClusterState, job: JobRecord, part: PartRecord, gone: list[int]) -> None:
    """A shrink is done on this part: its released workers have left, their GPUs
    are free (SEMANTICS: reclaim with grace: the job confirms at its next step)."""
    keep = [k for k, i in enumerate(part.gpu_indices) if i not in gone]
    part.gpu_indices = [part.gpu_indices[k] for k in keep]
    part.gpu_uuids = [part.gpu_uuids[k] for k in keep]
    part.workers = {gpu: w for gpu, w in part.workers.items() if gpu not in gone}
    part.releasing = [i for i in part.releasing if i not in gone]
    if not any(p.releasing for p in job.parts):
        job.release_deadline = None
    size = sum(len(p.gpu_indices) for p in job.parts if p.phase is not PartPhase.EXITED)
    text = f"shrunk to {size} GPUs: released {part.node}:{','.join(map(str, gone))}"
    state.store.save_job(job, EventRecord(state.clock(), job.id, "shrunk", text))
    if part.phase is PartPhase.EXITED and not part.gpu_indices:
        # Every worker here left: the part is over. Growing onto this node later
        # starts a new part of joiners (the agent has forgotten this one by then:
        # the ack for its exit goes out first on the same ordered stream).
        job.parts.remove(part)
    state.notify(job)


def _part_ended(
    state: ClusterState, job: JobRecord, part: PartRecord, code: int | None, why: str
) -> Outbox:
    part.phase, part.exit_code, part.message = PartPhase.EXITED, code, why
    live = [p for p in job.parts if p.phase is not PartPhase.EXITED]
    if live and job.elastic and code == 0 and not (job.preempting or job.cancel_requested):
        # All of this node's workers left (released) and the job goes on elsewhere.
        _released(state, job, part, list(part.gpu_indices))
    if not live:
        _finish(state, job)
        return []
    if code != 0:
        # One part failed: the job cannot go on; stop the others.
        job.reason = f"part on {part.node} ended: {why}; stopping the other parts"
        state.store.save_job(job, EventRecord(state.clock(), job.id, "part-failed", job.reason))
        return state.stop_commands(job, job.reason)
    state.store.save_job(job)
    return []


def _finish(state: ClusterState, job: JobRecord) -> None:
    if job.preempting and not job.cancel_requested:
        requeue(state, job)
        return
    failed = next((p for p in job.parts if p.exit_code != 0), None)
    code = 0 if failed is None else failed.exit_code
    if job.cancel_requested:
        final, why = JobState.CANCELLED, job.reason.replace("; stopping", "")
    elif failed is None:
        final, why = JobState.SUCCEEDED, "exited with 0"
    else:
        final = JobState.FAILED
        why = failed.message if len(job.parts) == 1 else f"on {failed.node}: {failed.message}"
    state.finish(job, final, code, why)
