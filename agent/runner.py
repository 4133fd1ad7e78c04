"""Runs job parts: a shim and a cgroup per worker, output to a log file, SIGTERM → grace →
SIGKILL, and a record of every part on disk so that a restarted agent takes them back.

Single-threaded on purpose: the owner (the link's event loop, or a test) calls `poll()` when
one of `sources()` fires (a shim's exit, a cgroup emptying: agent/wakeups), when `due_in()`
says, and after each command; everything that changes a part happens inside `start`, `stop`,
`resize`, `poll` and `adopt`. No waiter threads, no locks. Only `read_log` may run on another
thread: it touches nothing but the log file.

Each worker is a shim (agent/shim.py) in the worker's cgroup (agent/cgroups.py) with the
job's command as its child. Signals go to the shim, which passes them on (to the command's
process group for a rigid part, to the command alone for an elastic worker); SIGKILL after the
grace kills the worker's whole cgroup, so a process that called setsid dies too. When the
command exits, what it left behind is killed at once (as systemd does for a service whose main
process exits): the daemon gives these GPUs to someone else as soon as it reads EXITED, and a
straggler must not still hold them. A worker has ended only when its cgroup is empty.

Ended parts are remembered until the daemon acks them (`ack`), on disk too (agent/partstate),
so a report made while the daemon or the agent was away is resent in the next Register.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO

from agent import adopt as adoption
from agent import jobdirs, joblog, partstate, watch
from agent.cgroups import Containment, bases_of, choose_containment
from agent.jobenv import DEFAULT_JOB_PATH, job_env
from agent.model import JobSpec, PartKey, PartReport, Phase, ResizeRequest, StopRequest
from agent.part import (
    START_FAILED_EXIT_CODE,
    Part,
    Worker,
    describe_exit,
    ended_report,
    refusal,
    spec_problem,
    worker_plan,
)
from agent.spawn import spawn_workers
from agent.users import JobUser, UserRefused, job_user
from agent.wakeups import Source
from agent.worker import LEASE_DEADLINE_FILE, StartFailed, boot_id

log = logging.getLogger(__name__)

__all__ = ["START_FAILED_EXIT_CODE", "Runner", "describe_exit"]


class Runner:
    def __init__(
        self,
        state_dir: Path,
        node: str,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        gpu_indices: Iterable[int] | None = None,
        containment: Containment | None = None,
        job_path: str = DEFAULT_JOB_PATH,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.node = node
        self.job_path = job_path  # the PATH a job's environment starts with (agent/jobenv)
        # The node's GPUs; a job asking for another one is refused. None: no check.
        self.gpu_indices = None if gpu_indices is None else frozenset(gpu_indices)
        self.containment = choose_containment("auto", node) if containment is None else containment
        # Set by the agent when it shuts down: starts and joiners are refused from then on.
        self.stopping = False
        self.logs_dir = self.state_dir / "logs"
        self.work_dir = self.state_dir / "work"
        self.parts_dir = self.state_dir / "parts"
        self.status_dir = self.state_dir / "status"
        self._wall = wall_clock
        self._mono = monotonic
        # Root switches every job to its user; any other agent runs only its own user's.
        self._uid, self._gid = os.geteuid(), os.getegid()
        self._boot = boot_id()
        self._parts: dict[PartKey, Part] = {}

    # --- what the daemon asks -------------------------------------------------------------

    def start(self, spec: JobSpec) -> PartReport:
        """Start a part as its user. A bad command, working dir or user gives START_FAILED,
        GPUs held by another live part or an agent shutting down give REFUSED; never an
        exception."""
        known = self._parts.get(spec.key)
        if known is not None:  # idempotent: reconcile normally catches this first
            return known.report
        user: JobUser | None = None
        not_allowed = ""
        try:
            user = job_user(spec, self.node, self._uid)
        except UserRefused as e:
            not_allowed = str(e)
        try:
            logfile = self._new_log(spec.job_id, user)
        except OSError as e:
            return self._ended_at_start(spec, Phase.START_FAILED, f"cannot open the job's log: {e}")
        with logfile:
            # Every attempt, even one that never starts, leaves its header and why in the
            # log, so that `read_log` can explain what happened.
            gpus = ",".join(map(str, spec.gpu_indices)) or "none"
            joblog.append_line(
                logfile,
                f"--- schedulerd job {spec.job_id} attempt {spec.attempt} on node {self.node}, "
                f"GPUs {gpus} ---",
            )
            refused = "the agent is shutting down" if self.stopping else self._held(spec)
            if refused:
                return self._ended_at_start(spec, Phase.REFUSED, refused, logfile)
            problem = spec_problem(spec, self.node, self.gpu_indices) or not_allowed
            if problem or user is None:
                return self._ended_at_start(spec, Phase.START_FAILED, problem, logfile)
            part = Part(
                spec,
                [],
                PartReport(spec.job_id, spec.attempt, Phase.RUNNING),
                self.containment,
                user=user,
            )
            try:
                cwd = self._working_dir(spec, user)
                part.workers = self._spawn(part, user, worker_plan(spec), logfile, cwd, join=False)
            except StartFailed as e:  # the shim's message says it all
                return self._ended_at_start(spec, Phase.START_FAILED, str(e), logfile)
            except OSError as e:
                return self._ended_at_start(
                    spec, Phase.START_FAILED, f"cannot start {spec.command[0]!r}: {e}", logfile
                )
        pid = part.workers[0].child_pid
        part.report = PartReport(
            spec.job_id,
            spec.attempt,
            Phase.RUNNING,
            pid=pid,
            time=self._wall(),
            gpu_indices=tuple(sorted(spec.gpu_indices)),
        )
        self._parts[spec.key] = part
        self._save(part)
        log.info("job %d attempt %d started, pid %d", spec.job_id, spec.attempt, pid)
        return part.report

    def resize(self, req: ResizeRequest) -> PartReport | None:
        """Release workers (SIGUSR1 now, SIGKILL when the grace ends) and start joiners, in
        place. Joiners are refused (logged) while the agent stops, while the part stops, and
        once a worker not released has exited. Unknown or ended part: nothing (None or its
        report)."""
        part = self._parts.get(req.key)
        if part is None or part.spec.elastic is None:
            return None if part is None else part.report
        self._refresh(part)  # an exit not yet polled must count below
        if part.report.phase.ended:
            return part.report
        grace = max(0.0, req.grace_seconds) if math.isfinite(req.grace_seconds) else 0.0
        # A worker whose command has already exited is not released after the fact: how it
        # ended still counts (a failure stays a failure).
        leaving = [
            w
            for w in part.live()
            if set(w.gpus) & set(req.release) and not w.released and not w.shim_done
        ]
        for worker in leaving:
            worker.released = True
            worker.kill_at = self._mono() + grace
            worker.kill_deadline = self._wall() + grace
        if req.add:
            self._add_joiners(part, req)
        self._save(part)  # before the signals: a restarted agent must know who was released
        for worker in leaving:
            log.info(
                "job %d: releasing worker %d (GPU %s): %s",
                req.job_id,
                worker.worker_id,
                worker.gpus,
                req.reason or "shrink",
            )
            # The shim passes it to the worker itself, not its group: its own children
            # (DataLoader workers) would die of SIGUSR1 and fail its last step.
            if worker.shim is not None:
                worker.shim.send(signal.SIGUSR1)
        return part.report

    def stop(self, req: StopRequest) -> PartReport | None:
        """SIGTERM now and SIGKILL of the cgroups when the grace ends (checked by `poll`).

        Unknown part: None. Ended part: its report, untouched. A second stop can only shorten
        the grace, never extend it.
        """
        part = self._parts.get(req.key)
        if part is None or part.report.phase.ended:
            return None if part is None else part.report
        grace = max(0.0, req.grace_seconds) if math.isfinite(req.grace_seconds) else 0.0
        first = not part.stop_reason
        if first:
            part.stop_reason = req.reason or "stop requested"
            log.info(
                "stopping job %d attempt %d (%s), grace %.1f s",
                req.job_id,
                req.attempt,
                part.stop_reason,
                grace,
            )
        for worker in part.live():
            kill_at, deadline = self._mono() + grace, self._wall() + grace
            worker.kill_at = kill_at if worker.kill_at is None else min(worker.kill_at, kill_at)
            old = worker.kill_deadline
            worker.kill_deadline = deadline if old is None else min(old, deadline)
        self._save(part)
        for worker in part.live():
            if first and grace > 0 and not worker.released and worker.shim is not None:
                # The shim passes SIGTERM to a rigid job's whole process group, and to an
                # elastic worker alone (it checkpoints and tears its children down itself).
                worker.shim.send(signal.SIGTERM)
            watch.kill_if_due(part, worker, self._mono())
        return part.report

    def stop_all(self, grace_seconds: float, reason: str, *, by_node: bool = False) -> None:
        """Stop every running part. by_node: the node ends them (the agent shuts down or its
        lease ran out), so their reports say stopped_by_node and the daemon requeues them
        rather than failing them; a part the daemon was already stopping keeps its reason."""
        for part in list(self._parts.values()):
            if not part.report.phase.ended:
                if by_node and not part.stop_reason:
                    part.by_node = True
                self.stop(StopRequest(part.spec.job_id, part.spec.attempt, grace_seconds, reason))

    def ack(self, job_id: int, attempt: int) -> bool:
        """Forget an ended part (the daemon has recorded it): its record, its shims' status
        files and its cgroups go. A running part is kept."""
        part = self._parts.get((job_id, attempt))
        if part is None or not part.report.phase.ended:
            return False
        del self._parts[(job_id, attempt)]
        partstate.delete(self.parts_dir, (job_id, attempt))
        for worker in part.workers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(worker.status_file)
        part.box.remove([w.cgroup for w in part.workers])
        return True

    def adopt(self) -> list[PartReport]:
        """Take back the parts a previous agent left in this state dir (call once, before the
        link starts): running ones are watched and stopped as if started here, the ones that
        ended meanwhile are reported with the exit status their shims left (LOST when none
        did), and cgroups no record names are killed. Returns every part's report."""
        for record in partstate.load_all(self.parts_dir):
            if record.spec.key not in self._parts:
                part = adoption.take_back(
                    record, self._box(record.containment), self._boot, self._wall(), self._mono()
                )
                self._parts[part.spec.key] = part
                adoption.restop(part, self._mono())
        adoption.kill_orphans(
            [self.containment, *(p.box for p in self._parts.values()), *bases_of(self.node)],
            {w.cgroup for p in self._parts.values() for w in p.workers if w.cgroup},
        )
        self.poll()
        for part in self._parts.values():
            self._save(part)
        return self.reports()

    # --- what the agent reports -----------------------------------------------------------

    def poll(self) -> list[PartReport]:
        """Notice exits and due SIGKILLs; return the reports that changed since the last poll."""
        changed = []
        for part in list(self._parts.values()):
            if part.workers and not part.report.phase.ended:
                self._refresh(part)
            if part.changed:
                part.changed = False
                changed.append(part.report)
        return changed

    def sources(self) -> list[Source]:
        """What announces the next change of the running parts (agent/wakeups): after a
        `poll`, nothing changes until one of these fires or `due_in` is over."""
        return [
            s for p in self._parts.values() if not p.report.phase.ended for s in watch.sources(p)
        ]

    def due_in(self) -> float | None:
        """Seconds until `poll` must run whatever the events say (a SIGKILL after its grace,
        a kill to repeat, what no event announces); None: only an event can change a part."""
        now = self._mono()
        due = [
            d
            for p in self._parts.values()
            if p.workers and not p.report.phase.ended
            if (d := watch.due_in(p, now)) is not None
        ]
        return min(due) if due else None

    def reports(self) -> list[PartReport]:
        """Running parts and ended parts not yet acked, in (job, attempt) order."""
        return [self._parts[k].report for k in sorted(self._parts)]

    def report(self, key: PartKey) -> PartReport | None:
        part = self._parts.get(key)
        return None if part is None else part.report

    def any_running(self) -> bool:
        return any(not p.report.phase.ended for p in self._parts.values())

    def summary(self) -> tuple[int, int]:
        """(job parts running, GPUs they hold), for the agent's STATUS line."""
        live = [p for p in self._parts.values() if not p.report.phase.ended]
        return len(live), sum(len(p.live_gpus()) for p in live)

    def log_dir(self, job_id: int) -> Path:
        """The job's log folder, its user's (agent/jobdirs)."""
        return self.logs_dir / f"job-{job_id}"

    def log_path(self, job_id: int) -> Path:
        return self.log_dir(job_id) / joblog.LOG_NAME

    def read_log(self, job_id: int, offset: int, max_bytes: int) -> tuple[bytes, bool, int]:
        """(data, found, next_offset); max_bytes 0 means a default, and it is capped. Only
        this job's log, never through a link, and only a regular file of the job's user
        (agent/joblog)."""
        return joblog.read_page(self.log_dir(job_id), offset, max_bytes)

    # --- helpers --------------------------------------------------------------------------

    def _refresh(self, part: Part) -> None:
        """Look at a running part: exits, leftovers, due kills, a failed peer, its end."""
        before = part.live_gpus()
        dirty = watch.refresh(part, self._mono)
        stop = watch.failed_peer(part)
        if stop is not None:
            self.stop(stop)
        if not part.live():
            part.report = ended_report(part, self._wall())
            self._log_end(part)
            part.changed = dirty = True
        elif part.live_gpus() != before:  # a released worker left: say which GPUs remain
            part.report = replace(part.report, gpu_indices=part.live_gpus(), time=self._wall())
            part.changed = True
        if dirty:
            self._save(part)

    def _add_joiners(self, part: Part, req: ResizeRequest) -> None:
        why = refusal(part, self.stopping)
        taken = {w.worker_id for w in part.workers}
        held = self._held(part.spec, gpus=[g for _, g in req.add])
        joiners = [(wid, (gpu,)) for wid, gpu in req.add if wid not in taken]
        if why or held or len(joiners) < len(req.add):
            log.warning(
                "job %d attempt %d: joiners %s refused: %s",
                req.job_id,
                req.attempt,
                list(req.add),
                why or held or f"worker ids already used: {sorted(taken)}",
            )
            return
        try:
            # The user the part started as; a part adopted from an agent that did not record
            # it (before jobs ran as their users) is looked up again.
            user = part.user or job_user(part.spec, self.node, self._uid)
            with self._open_log(part.spec.job_id) as logfile:
                cwd = self._working_dir(part.spec, user)
                part.workers += self._spawn(part, user, joiners, logfile, cwd, join=True)
        except (OSError, StartFailed, UserRefused) as e:
            log.warning("job %d: cannot start joiners %s: %s", req.job_id, list(req.add), e)
        part.report = replace(part.report, gpu_indices=part.live_gpus())

    def _spawn(
        self,
        part: Part,
        user: JobUser,
        plan: Sequence[tuple[int, tuple[int, ...]]],
        logfile: IO[bytes],
        cwd: Path,
        join: bool,
    ) -> list[Worker]:
        self.status_dir.mkdir(parents=True, exist_ok=True)
        spec = part.spec
        return spawn_workers(
            part,
            plan,
            user=user,
            switch_user=self._uid == 0,
            logfile=logfile,
            cwd=cwd,
            envs={
                wid: job_env(spec, user, self.job_path, self.node, gpus, wid, join)
                for wid, gpus in plan
            },
            status_dir=self.status_dir,
            lease_file=self.state_dir / LEASE_DEADLINE_FILE,
        )

    def _held(self, spec: JobSpec, gpus: Iterable[int] | None = None) -> str:
        """Which of these GPUs a live part of another (job, attempt) holds, in words."""
        wanted = set(spec.gpu_indices if gpus is None else gpus)
        holders = []
        for other in self._parts.values():
            if other.spec.key == spec.key or other.report.phase.ended:
                continue
            self._refresh(other)  # its end may not have been polled yet
            for gpu in sorted(wanted & set(other.live_gpus())):
                holders.append(
                    f"GPU {gpu} is held by job {other.spec.job_id} attempt {other.spec.attempt}"
                )
        return "; ".join(holders)

    def _working_dir(self, spec: JobSpec, user: JobUser) -> Path:
        if spec.working_dir:  # entered by the shim as the user: one it may not is START_FAILED
            return Path(spec.working_dir)
        return jobdirs.owned_dir(self.work_dir, f"job-{spec.job_id}", user.uid, user.gid)

    def _box(self, kind: str) -> Containment:
        return adoption.containment_of(kind, self.containment, self.node)

    def _save(self, part: Part) -> None:
        try:
            partstate.save(self.parts_dir, part.record(self._boot))
        except OSError as e:  # the part still runs; only a restart would not know it
            log.error("cannot record job %d attempt %d: %s", *part.spec.key, e)

    def _ended_at_start(
        self, spec: JobSpec, phase: Phase, message: str, logfile: IO[bytes] | None = None
    ) -> PartReport:
        log.warning("job %d attempt %d %s: %s", spec.job_id, spec.attempt, phase.value, message)
        if logfile is not None:
            joblog.append_line(logfile, f"--- schedulerd: {message} ---")
        code = START_FAILED_EXIT_CODE if phase is Phase.START_FAILED else 0
        report = PartReport(
            spec.job_id, spec.attempt, phase, exit_code=code, message=message, time=self._wall()
        )
        part = Part(spec, [], report, self.containment)
        self._parts[spec.key] = part
        self._save(part)
        return report

    def _log_end(self, part: Part) -> None:
        spec, message = part.spec, part.report.message
        log.info("job %d attempt %d ended: %s", spec.job_id, spec.attempt, message)
        try:
            with self._open_log(spec.job_id) as f:
                joblog.append_line(
                    f,
                    f"--- schedulerd job {spec.job_id} attempt {spec.attempt} ended: {message} ---",
                )
        except OSError:
            log.debug("cannot append to the log of job %d", spec.job_id, exc_info=True)

    def _new_log(self, job_id: int, user: JobUser | None) -> IO[bytes]:
        """The log for a new attempt, in a folder of the job's user. When no user can be had
        here the folder is left as it is (its owner's, or the agent's when new): why the
        attempt failed is written there, and nobody is given it."""
        folder = self.log_dir(job_id)
        if user is not None or not folder.exists():
            uid, gid = (user.uid, user.gid) if user is not None else (self._uid, self._gid)
            folder = jobdirs.owned_dir(self.logs_dir, folder.name, uid, gid)
        return joblog.open_for_append(folder)

    def _open_log(self, job_id: int) -> IO[bytes]:
        return joblog.open_for_append(self.log_dir(job_id))
