"""What agents tell the daemon: registration, job reports, silence, and forgetting.

Each function builds one `Change` (check, commit, then apply) and returns the
commands to send once it is committed. The rules (docs/fencing.md):

- What an agent reports is the truth about what runs. A part is over only when its
  agent says so (EXITED, START_FAILED, LOST, REFUSED), or when an admin forgets the
  node ("I powered it off").
- A node silent past the node timeout is DOWN: its parts are marked lost and their
  jobs requeued, but the GPUs they held stay *fenced*, given to nobody, until the
  agent reports those parts gone or the node is forgotten.
- A part that the agent reports running but the daemon does not know (an old
  attempt, after a partition) is stopped at once, and fenced until it is gone.
- A job ended by the node rather than by itself (lost, refused, stopped by the
  agent's shutdown or lost lease) goes back to the queue, never FAILED.
"""

from __future__ import annotations

from dataclasses import dataclass

from schedulerd.daemon.change import Change
from schedulerd.daemon.commands import AckPart, Outbox, ResizePart, StopPart
from schedulerd.daemon.endings import finish_parts, released
from schedulerd.daemon.state import ClusterState
from schedulerd.daemon.stops import UNKNOWN_PART_GRACE_S, must_stop, owed_stops
from schedulerd.exits import describe_exit
from schedulerd.store import JobRecord, NodeRecord, PartPhase, PartRecord


@dataclass(frozen=True)
class PartReport:
    job_id: int
    attempt: int
    phase: str  # "running", or ended: "exited", "start_failed", "lost", "refused"
    exit_code: int = 0
    pid: int = 0
    message: str = ""
    gpu_indices: tuple[int, ...] = ()  # GPUs whose processes are alive
    stopped_by_node: bool = False  # the agent ended it (shutdown, lost lease)

    @property
    def key(self) -> tuple[int, int]:
        return (self.job_id, self.attempt)


def register(state: ClusterState, node: NodeRecord, reports: list[PartReport]) -> Outbox:
    """An agent (re)connects with its GPUs and every job part it has. Commits the
    node's new session epoch (`node.epoch`) with what the reports say."""
    ch = Change(state)  # (first: it applies a change still pending in the group writer)
    known = state.nodes.get(node.name)
    if known is not None:
        node.drained, node.drain_reason = known.drained, known.drain_reason
        node.fences = list(known.fences)
    node.epoch = (known.epoch if known is not None else 0) + 1
    node.down = False
    node.last_seen = ch.now
    ch.put_node(node)

    running = {r.key for r in reports if r.phase == "running"}
    for r in reports:
        add_report(ch, node.name, r)
        ch.out += _owed_resizes(ch, node.name, r)
    # Fences for parts the agent no longer runs: it persists every part it starts
    # and kills what it does not know, so not listed means gone.
    for f in list(node.fences):
        if (f.job_id, f.attempt) not in running:
            ch.unfence(node.name, f.job_id, f.attempt)
    listed = {r.key for r in reports}
    # The jobs with a part here only (reports move no part to another node).
    for live in state.jobs_on(node.name):
        job = ch.touched_job(live.id) or live
        for part in job.parts:
            if part.node != node.name or (job.id, job.attempt) in listed:
                continue
            if part.phase is PartPhase.ASSIGNED:
                # Committed but maybe never delivered (daemon restart): deliver now;
                # the agent ignores a start it already has.
                copy = ch.job(live)
                ch.out.append((node.name, state.start_part(copy, _same(copy, part))))
            elif part.phase is PartPhase.RUNNING:
                copy = ch.job(live)
                why = f"lost: the agent on {node.name} no longer has it"
                finish_parts(ch, copy, _same(copy, part), None, why, cause="lost")
    out = ch.commit()
    state.connected.add(node.name)
    state.stopping_nodes.discard(node.name)
    return out


def report(state: ClusterState, node: str, r: PartReport) -> Outbox:
    ch = Change(state)
    add_report(ch, node, r)
    return ch.commit()


async def report_async(state: ClusterState, node: str, r: PartReport) -> Outbox:
    """`report`, its commit shared with concurrent writes (store/group.py)."""
    await state.writer.changes_idle()
    ch = Change(state)
    add_report(ch, node, r)
    return await ch.commit_async()


def add_report(ch: Change, node: str, r: PartReport) -> None:
    """Build an agent's report into `ch`, which may hold other reports (of this node at
    its registration, of many nodes in daemon/reports.py): everything read goes through
    what the change holds already."""
    state = ch.state
    live = state.jobs.get(r.job_id)
    job = None if live is None else (ch.touched_job(live.id) or live)
    part = _part(job, node, r.attempt) if job is not None else None
    if live is None or job is None or part is None or part.phase is PartPhase.EXITED:
        # Ended, replaced by a newer attempt, never ours, or recorded ended without its
        # agent's word (lost when its node went down, while the job's other parts still
        # stop): it must not run, and its GPUs are nobody's until it is gone.
        if r.phase == "running":
            why = f"job {r.job_id} attempt {r.attempt} is not known to the daemon"
            ch.fence(node, list(r.gpu_indices), r.job_id, r.attempt, why)
            stop = StopPart(r.job_id, r.attempt, UNKNOWN_PART_GRACE_S, why)
            ch.out.append((node, stop))
        else:
            ch.unfence(node, r.job_id, r.attempt)
            ch.out.append((node, AckPart(r.job_id, r.attempt)))
        return
    if r.phase == "running":
        _running(ch, live, part, r)
        job = ch.touched_job(live.id) or live
        ch.out += owed_stops(state, job, ch.now, node)
        return
    copy = ch.job(live)
    # Stopping already: its parts were sent their stops when the stop began (and are
    # again at each reconnection), so this part's end sends none to the others. Else a
    # job on N nodes would get about N²/2 stops as its parts end, each answered by an
    # agent that has already stopped it (docs/nodesim.md).
    stopping, mark = must_stop(copy), len(ch.out)
    code = r.exit_code if r.phase == "exited" else None if r.phase == "lost" else 127
    why = r.message or _default_message(r.phase, code)
    cause = ""
    if r.phase in ("lost", "refused"):
        cause = r.phase
    elif r.stopped_by_node:
        cause, why = "node-stopped", f"the node was shut down ({why})"
    finish_parts(ch, copy, _same(copy, part), code, why, cause=cause)
    if stopping:
        ch.out[mark:] = [
            (n, c)
            for n, c in ch.out[mark:]
            if not (isinstance(c, StopPart) and c.job_id == copy.id)
        ]
    ch.unfence(node, r.job_id, r.attempt)
    ch.out.append((node, AckPart(r.job_id, r.attempt)))  # sent after the commit


def _running(ch: Change, live: JobRecord, part: PartRecord, r: PartReport) -> None:
    """A live part's report: confirm its start, complete shrinks, notice an elastic
    job whose training has ended. Copies the job only when something changes."""
    if part.phase is PartPhase.ASSIGNED:
        copy = ch.job(live)
        mine = _same(copy, part)
        mine.phase, mine.pid = PartPhase.RUNNING, r.pid
        part = mine
    if not live.elastic:
        return
    alive = set(r.gpu_indices)
    gone = [i for i in part.releasing if i not in alive]
    if gone:
        copy = ch.job(live)
        released(ch, copy, _same(copy, part), gone)
        part = _same(copy, part)
    # Worker 0 decides the end of the training (docs/elastic.md): once it has left
    # without a release, the job is ending and is never grown again. (Only worker 0:
    # a joiner's GPU may be missing from a report that crossed its resize command.)
    anchor = next((g for g, w in part.workers.items() if w == 0), None)
    quit_early = anchor is not None and anchor not in alive and anchor not in part.releasing
    job = ch.touched_job(live.id) or live
    if quit_early and not job.ending and not job.preempting and not job.cancel_requested:
        copy = ch.job(live)
        copy.ending = True
        ch.event(copy.id, "ending", f"worker 0 left on {part.node}: the training has ended")


def _owed_resizes(ch: Change, node: str, r: PartReport) -> Outbox:
    """Resize commands an elastic part may have missed (sent while the agent was
    away, or committed just before a daemon crash): repeat the release of GPUs
    still running, and start the committed workers the agent does not have."""
    live = ch.state.jobs.get(r.job_id)
    job = None if live is None else (ch.touched_job(live.id) or live)
    part = _part(job, node, r.attempt) if job is not None else None
    if job is None or part is None or not job.elastic or r.phase != "running" or job.ending:
        return []
    alive = set(r.gpu_indices)
    release = tuple(i for i in part.releasing if i in alive)
    add = tuple(
        (w, gpu)
        for gpu, w in sorted(part.workers.items())
        if gpu not in alive and gpu not in part.releasing
    )
    if not release and not add:
        return []
    grace = max(0.0, (job.release_deadline or ch.now) - ch.now)
    why = "repeated after the agent reconnected"
    return [(node, ResizePart(job.id, job.attempt, release, grace, add, why))]


def disconnect(state: ClusterState, node: str) -> None:
    """The stream ended. The node's silence counts from its last message (not from
    now): the node timeout is about how long its agent has been unheard."""
    state.connected.discard(node)


def expire_nodes(state: ClusterState, node_timeout_s: float) -> tuple[list[str], Outbox]:
    """Nodes silent past the timeout (connected or not) go DOWN: their parts are lost
    and requeued, their GPUs fenced. Returns the names that went down."""
    state.writer.settle()  # a change pending in the group writer is applied first
    now = state.clock()
    down = [
        n.name for n in state.nodes.values() if not n.down and now - n.last_seen >= node_timeout_s
    ]
    if not down:
        return [], []
    ch = Change(state)
    for name in down:
        ch.node(name).down = True
        for live in state.jobs_on(name):
            job = ch.touched_job(live.id) or live
            for part in job.parts:
                if part.node == name and part.phase is not PartPhase.EXITED:
                    copy = ch.job(live)
                    mine = _same(copy, part)
                    why = f"node {name} lost: silent for {node_timeout_s:g} s"
                    ch.fence(name, list(mine.gpu_indices), copy.id, copy.attempt, why)
                    finish_parts(ch, copy, mine, None, why, cause="lost")
    return down, ch.commit()


def forget(state: ClusterState, name: str) -> tuple[list[int], int, Outbox]:
    """An admin says the node is powered off: its processes are gone. Requeue its
    jobs, lift its fences, drop its record. (requeued job ids, GPUs released, commands)"""
    ch = Change(state)  # (first: it applies a change still pending in the group writer)
    node = state.nodes[name]
    requeued = []
    held = 0
    for live in state.jobs_on(name):
        for part in live.parts:
            if part.node == name and part.phase is not PartPhase.EXITED:
                copy = ch.job(live)
                held += len(part.gpu_indices)
                why = f"node {name} was forgotten by an admin (powered off)"
                finish_parts(ch, copy, _same(copy, part), None, why, cause="lost")
                requeued.append(live.id)
    released_gpus = held + len({f.gpu_index for f in node.fences})  # a GPU may have two
    ch.forget_node(name)
    return sorted(set(requeued)), released_gpus, ch.commit()


def _part(job: JobRecord | None, node: str, attempt: int) -> PartRecord | None:
    if job is None or job.attempt != attempt:
        return None
    # An elastic job that lost its part here and grew onto the node again has two parts
    # here: the agent speaks of the live one (the lost one's end was acknowledged).
    here = [p for p in job.parts if p.node == node]
    return next((p for p in here if p.phase is not PartPhase.EXITED), here[0] if here else None)


def _same(copy: JobRecord, part: PartRecord) -> PartRecord:
    """The copy's record of `part` (same node, same rank: a node may have two)."""
    return next(p for p in copy.parts if p.node == part.node and p.node_rank == part.node_rank)


def _default_message(phase: str, code: int | None) -> str:
    if phase == "exited":
        return "exited" if code is None else describe_exit(code)
    if phase == "lost":
        return "its processes ended while no agent watched; exit status unknown"
    if phase == "refused":
        return "the agent refused to start it"
    return "could not start"


__all__ = [
    "add_report",
    "disconnect",
    "expire_nodes",
    "forget",
    "register",
    "report",
    "report_async",
]
