"""How a job part's end is recorded, on a `Change`'s working copy of its job:
a shrink completed, a part ended, a job finished or put back in the queue."""

from __future__ import annotations

from schedulerd.daemon.change import Change
from schedulerd.daemon.stops import begin_stop, owed_stops
from schedulerd.store import JobRecord, JobState, PartPhase, PartRecord


def finish_parts(
    ch: Change, job: JobRecord, part: PartRecord, code: int | None, why: str, cause: str = ""
) -> None:
    """`part` has ended (code None: unknown). `cause` set: the node ended it, not the
    job ("lost", "refused", "node-stopped"): the job goes back to the queue once its
    other parts have stopped, instead of failing."""
    part.phase, part.exit_code, part.message = PartPhase.EXITED, code, why
    alive = [p for p in job.parts if p.phase is not PartPhase.EXITED]
    if cause and not job.cancel_requested and not job.preempting:
        job.preempting, job.requeue_cause = True, cause
        job.reason = f"{why}; back to the queue" + ("" if not alive else " once its parts stop")
        begin_stop(ch.state, job, ch.now)
        ch.event(job.id, "requeue-requested", job.reason)
    elif alive and job.elastic and code == 0 and not (job.preempting or job.cancel_requested):
        if set(part.gpu_indices) <= set(part.releasing):
            released(ch, job, part, list(part.gpu_indices))  # released: the job goes on
        elif not job.ending:
            # Its workers ended without a release: the training is over (never regrow).
            job.ending = True
            ch.event(job.id, "ending", f"its workers on {part.node} ended: training ended")
    if not alive:
        _finish(ch, job)
        return
    if code != 0 and not cause and not job.preempting and not job.cancel_requested:
        # One part failed: the job cannot go on; stop the others.
        job.reason = f"part on {part.node} ended: {why}; stopping the other parts"
        begin_stop(ch.state, job, ch.now)
        ch.event(job.id, "part-failed", job.reason)
    ch.out += owed_stops(ch.state, job, ch.now)


def _finish(ch: Change, job: JobRecord) -> None:
    if job.preempting and not job.cancel_requested:
        requeue(ch, job)
        return
    failed = next((p for p in job.parts if p.exit_code != 0), None)
    code = 0 if failed is None else failed.exit_code
    if job.cancel_requested:
        final = JobState.TIMEOUT if job.stop_cause == "timeout" else JobState.CANCELLED
        why = job.reason.replace("; stopping", "")
    elif failed is None:
        final, why = JobState.SUCCEEDED, "exited with 0"
    else:
        final = JobState.FAILED
        why = failed.message if len(job.parts) == 1 else f"on {failed.node}: {failed.message}"
    end_job(ch, job, final, code, why)


def end_job(ch: Change, job: JobRecord, final: JobState, code: int | None, why: str) -> None:
    job.state, job.exit_code, job.end_time, job.reason = final, code, ch.now, why
    ch.event(job.id, final.value.lower(), why)


def requeue(ch: Change, job: JobRecord) -> None:
    """A job's processes are gone: back to the queue with its place (its id is its
    queue order) and a new attempt (SEMANTICS: reclaim with grace)."""
    reason, cause = job.reason, job.requeue_cause or "preempted"
    job.attempt += 1
    if cause == "preempted":  # not a node that went down: that was no one's choice
        job.preemptions += 1
    job.state = JobState.PREEMPTED
    job.queued_at = ch.now
    job.parts = []
    job.preempting = False
    job.requeue_cause = ""
    job.ending = False
    job.release_deadline = None
    job.start_time = None
    job.store_address = ""
    job.next_worker_id = 0
    job.reason = f"{_words(cause)} ({reason}); back in the queue, restart {job.attempt}"
    ch.event(job.id, cause, reason)


def _words(cause: str) -> str:
    return {"node-stopped": "its node was shut down", "lost": "lost"}.get(cause, cause)


def released(ch: Change, job: JobRecord, part: PartRecord, gone: list[int]) -> None:
    """A shrink is done on this part: its released workers have left, their GPUs
    are free (SEMANTICS: reclaim with grace: the job confirms at its next step)."""
    keep = [k for k, i in enumerate(part.gpu_indices) if i not in gone]
    part.gpu_indices = [part.gpu_indices[k] for k in keep]
    part.gpu_uuids = [part.gpu_uuids[k] for k in keep]
    part.workers = {gpu: w for gpu, w in part.workers.items() if gpu not in gone}
    part.releasing = [i for i in part.releasing if i not in gone]
    if not any(p.releasing for p in job.parts) and not job.preempting:
        job.release_deadline = None
    size = sum(len(p.gpu_indices) for p in job.parts if p.phase is not PartPhase.EXITED)
    gpus = ",".join(map(str, gone))
    ch.event(job.id, "shrunk", f"shrunk to {size} GPUs: released {part.node}:{gpus}")
    if part.phase is PartPhase.EXITED and not part.gpu_indices:
        # Every worker here left: the part is over. Growing onto this node later
        # starts a new part of joiners (the agent has forgotten this one by then:
        # the ack for its exit goes out first on the same ordered stream).
        job.parts.remove(part)
