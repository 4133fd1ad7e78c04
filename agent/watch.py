"""Watching a running part's workers: a shim that exited, what its command left behind, a
kill that is due, a worker that is over.

A worker is over in two steps. When its shim exits (the command has ended), its exit status is
read and whatever is still in its cgroup is SIGKILLed at once: the daemon gives the GPUs away
as soon as it reads EXITED, so a straggler that called setsid or daemonized must not keep
them. Only when the cgroup is empty has the worker ended. Without cgroups (process groups) the
shim itself killed its command's group before it exited, and that is all there is to wait for.

Nothing here waits: the runner looks when the kernel says something happened (`sources`:
agent/wakeups) or when a deadline of its own is due (`due_in`: a SIGKILL after a grace, a
kill to repeat), and only where neither can be had (a kernel without pidfds, a cgroup v1
that is emptying) on a short clock (LOOK_AGAIN_S).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

from agent.model import StopRequest
from agent.part import Part, Worker, describe_exit, exit_of
from agent.wakeups import Emptied, Exit, Source

log = logging.getLogger(__name__)

FAILED_PEER_GRACE_S = 5.0  # workers of a part whose worker failed: time to save and leave
KILL_AGAIN_S = 1.0  # a cgroup still populated this long after a kill is killed again
LOOK_AGAIN_S = 0.1  # how soon to look at what no event will announce


def refresh(part: Part, now: Callable[[], float]) -> bool:
    """Look at each worker not yet ended; True when anything changed (to be recorded)."""
    changed = False
    for worker in part.live():
        if not worker.shim_done:
            if worker.shim is None or worker.shim.exited():
                _shim_exited(part, worker, now())
                changed = True
            else:
                changed |= kill_if_due(part, worker, now())
        if worker.shim_done:
            if not part.box.populated(worker.cgroup):
                worker.ended = changed = True
                part.box.remove([worker.cgroup])
            elif now() - worker.last_kill >= KILL_AGAIN_S:
                # Something forked while it was being killed (a v1 freezer that could not
                # freeze a task in uninterruptible sleep): kill again.
                part.box.kill(worker.cgroup)
                worker.last_kill = now()
    return changed


def kill_if_due(part: Part, worker: Worker, now: float) -> bool:
    """SIGKILL the worker's cgroup (and its command's group) once its grace is over."""
    if worker.kill_at is None or now < worker.kill_at or worker.killed:
        return False
    log.info(
        "job %d attempt %d worker %d: grace over, SIGKILL",
        part.spec.job_id,
        part.spec.attempt,
        worker.worker_id,
    )
    worker.killed = True
    if worker.shim is not None:
        worker.shim.send(signal.SIGHUP)  # the shim SIGKILLs its command's process group
    part.box.kill(worker.cgroup)  # and the cgroup catches what left that group
    worker.last_kill = now
    return True


def failed_peer(part: Part) -> StopRequest | None:
    """One worker of an elastic part failed: the others would only wait for it until their
    timeout. End them now, with a short grace."""
    failed = [w for w in part.workers if w.shim_done and w.exit_code and not w.released]
    if not failed or not part.live() or part.stop_reason:
        return None
    code = failed[0].exit_code or 0
    return StopRequest(
        part.spec.job_id,
        part.spec.attempt,
        FAILED_PEER_GRACE_S,
        f"worker {failed[0].worker_id} failed: {describe_exit(code)}",
    )


def _shim_exited(part: Part, worker: Worker, now: float) -> None:
    worker.shim_done = True
    worker.exit_code, worker.exit_time = exit_of(worker)
    if part.box.populated(worker.cgroup):
        log.info(
            "job %d attempt %d worker %d: its command ended; killing what it left behind",
            part.spec.job_id,
            part.spec.attempt,
            worker.worker_id,
        )
        part.box.kill(worker.cgroup)
        worker.last_kill = now


def sources(part: Part) -> list[Source]:
    """What announces the next change of a running part's workers: each live shim's exit,
    and each live worker's cgroup emptying (cgroup v2)."""
    out: list[Source] = []
    for worker in part.live():
        if not worker.shim_done and worker.shim is not None:
            out.append(Exit(worker.shim.pid, worker.shim.start_time, worker.shim))
        events = part.box.events_file(worker.cgroup)
        if events:
            out.append(Emptied(events))
    return out


def due_in(part: Part, now: float) -> float | None:
    """Seconds until this part must be looked at whatever the events say (0: at once), or
    None when only an event can change it."""
    due: list[float] = []
    for worker in part.live():
        if not worker.shim_done:
            if worker.kill_at is not None and not worker.killed:
                due.append(worker.kill_at - now)
            if worker.shim is None or worker.shim.fileno() < 0:
                due.append(LOOK_AGAIN_S)  # no pidfd: its exit is seen only by looking
        else:  # its command ended; its cgroup is not yet empty
            due.append(worker.last_kill + KILL_AGAIN_S - now)
            if not part.box.events_file(worker.cgroup):
                due.append(LOOK_AGAIN_S)
    return max(0.0, min(due)) if due else None
