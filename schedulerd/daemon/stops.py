"""One rule, one function: must this job's processes be stopped, and with what grace?

Every path that can owe a stop asks here: a cancel, a plan's preemption, a failed
part, a lost part, an agent's report, an agent's reconnection. So a stop lost with
a broken stream is sent again on reconnect whatever caused it (ARCHITECTURE: one
rule, one function).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schedulerd.daemon.commands import Outbox, StopPart
from schedulerd.store import JobRecord, PartPhase

if TYPE_CHECKING:
    from schedulerd.daemon.state import ClusterState

# A part the daemon does not know (an old attempt, an ended job) gets no grace: its
# place was given away, or is fenced until it goes.
UNKNOWN_PART_GRACE_S = 0.0


def must_stop(job: JobRecord) -> bool:
    """The job is being cancelled, requeued (preempted, lost, its node stopping), or
    one of its parts failed: every part still alive must stop."""
    failing = any(p.phase is PartPhase.EXITED and p.exit_code != 0 for p in job.parts)
    return job.cancel_requested or job.preempting or failing


def grace_left(state: ClusterState, job: JobRecord, now: float) -> float:
    """What is left of the grace the stop started with; the whole grace if none began."""
    if job.release_deadline is not None:
        return max(0.0, job.release_deadline - now)
    return state.grace_of(job)


def owed_stops(state: ClusterState, job: JobRecord, now: float, node: str = "") -> Outbox:
    """The stop commands the job's live parts (on `node`, or everywhere) are owed now."""
    if not must_stop(job):
        return []
    grace = grace_left(state, job, now)
    return [
        (p.node, StopPart(job.id, job.attempt, grace, job.reason))
        for p in job.parts
        if p.phase is not PartPhase.EXITED and (not node or p.node == node)
    ]


def begin_stop(state: ClusterState, job: JobRecord, now: float) -> None:
    """Start the grace clock of a stop, unless one already runs (never extend it)."""
    deadline = now + state.grace_of(job)
    if job.release_deadline is None or job.release_deadline > deadline:
        job.release_deadline = deadline
