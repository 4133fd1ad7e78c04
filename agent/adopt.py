"""Adoption: a restarted agent takes back the parts its predecessor left running.

A part record (agent/partstate) says which shim, cgroup and status file each worker has. A
worker whose shim still lives (same pid and same start time, held through a pidfd) is watched
as before; one whose shim is gone is over, and its exit status is what the shim wrote (none:
unknown; a part with no known status at all is LOST). What a gone shim left in its cgroup is
killed by the runner's next poll, as for any worker whose command exited. Stop deadlines are
kept in wall-clock time, so a part that was stopping is killed when it was due, not later.

Cgroups under the agent's base that no record names belong to nobody: a part the agent does
not list would hold its GPUs unseen by the daemon, so their processes are killed.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterable
from dataclasses import fields

from agent.cgroups import Containment, ContainmentUnavailable, ProcessGroups, choose_containment
from agent.part import Part, Worker
from agent.partstate import PartRecord, WorkerRecord
from agent.worker import AdoptedShim

log = logging.getLogger(__name__)

ORPHAN_KILL_TIMEOUT_S = 10.0


def take_back(record: PartRecord, box: Containment, boot: str, wall: float, mono: float) -> Part:
    """The part a record describes, its live shims found again."""
    same_boot = bool(record.boot_id) and record.boot_id == boot
    workers = []
    for saved in record.workers:
        worker = Worker(**{f.name: getattr(saved, f.name) for f in fields(WorkerRecord)})
        worker.shim_done = worker.ended
        if not worker.ended:
            if same_boot:  # after a reboot no process of the record lives
                worker.shim = AdoptedShim.find(worker.shim_pid, worker.shim_start)
            if worker.kill_deadline is not None:
                worker.kill_at = mono + max(0.0, worker.kill_deadline - wall)
            if worker.shim is not None:
                # The dead agent may not have finished its kill: do it again. (A worker
                # found gone keeps the flag: it was SIGKILLed, even if no status says so.)
                worker.killed = False
        workers.append(worker)
    part = Part(
        record.spec,
        workers,
        record.report,
        box,
        user=record.user,
        stop_reason=record.stop_reason,
        by_node=record.by_node,
    )
    if record.report.phase.ended:
        for worker in workers:
            worker.ended = True  # nothing to watch; its report is resent until acked
    else:
        part.changed = True  # the daemon hears of it in the next poll too
    alive = sum(1 for w in workers if w.shim is not None)
    log.info(
        "adopted job %d attempt %d (%s): %d of %d workers still running",
        record.spec.job_id,
        record.spec.attempt,
        record.report.phase.value,
        alive,
        len(workers),
    )
    return part


def restop(part: Part, now: float) -> None:
    """A part that was stopping when the agent died goes on stopping: SIGTERM again (the dead
    agent may not have sent it) unless its SIGKILL is due; `poll` kills at the recorded
    deadline, or at once if it has passed."""
    if not part.stop_reason:
        return
    for worker in part.live():
        due = worker.kill_at is not None and worker.kill_at <= now
        if worker.shim is not None and not worker.released and not due:
            worker.shim.send(signal.SIGTERM)


def kill_orphans(boxes: Iterable[Containment], known: set[str]) -> None:
    """Kill and remove the cgroups under these bases that no part owns."""
    seen = set()
    for box in boxes:
        if box.base in seen or not box.base:
            continue
        seen.add(box.base)
        leftovers = box.leftovers(known)
        for cgroup in leftovers:
            if not box.populated(cgroup):
                continue
            log.warning("killing the processes in %s: no part of this agent owns it", cgroup)
            box.kill(cgroup)
            deadline = time.monotonic() + ORPHAN_KILL_TIMEOUT_S
            while box.populated(cgroup) and time.monotonic() < deadline:
                time.sleep(0.01)
            if box.populated(cgroup):
                log.error(
                    "%s still has processes %.0f s after a kill", cgroup, ORPHAN_KILL_TIMEOUT_S
                )
        box.remove(leftovers)


def containment_of(kind: str, current: Containment, node: str) -> Containment:
    """The containment a record's cgroups belong to (an agent may have been restarted with
    another --containment). One that cannot be used here gives process groups: its shims are
    still found by pid."""
    if kind == current.kind:
        return current
    if kind == "pgroup":
        return ProcessGroups()
    try:
        return choose_containment(kind, node)
    except ContainmentUnavailable as e:
        log.warning("cannot look into the %s cgroups of an earlier agent: %s", kind, e)
        return ProcessGroups()
