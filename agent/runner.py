"""Runs job parts: one process group per job, output to a log file, SIGTERM → grace → SIGKILL.

Single-threaded on purpose: the owner (the link's event loop, or a test) calls `poll()` every
~100 ms, and everything that changes a part happens inside `start`, `stop` and `poll`. No
waiter threads, no locks. Only `read_log` may run on another thread: it touches nothing but
the log file.

Process groups: each job starts in a new session (`start_new_session=True`), so its pgid is the
leader's pid and `os.killpg` reaches every process it forked (unless one calls setsid itself;
only cgroups would catch those). The leader is reaped only after its group has been signalled:
while the leader is an unreaped zombie its pid, and so the pgid, cannot be reused, so a
`killpg` never hits a stranger.

When the leader exits, whatever is left of its group is SIGKILLed at once (as systemd does for
a service whose main process exits): the daemon will give these GPUs to someone else as soon
as it reads EXITED, and a straggler must not still hold them.

Ended parts are remembered until the daemon acks them (`ack`), so a report made while the
daemon was away is resent in the next Register (see agent.link).

A part is one or more worker processes, each its own process group: a rigid part has one
process holding all of the part's GPUs; an elastic part has one per GPU (docs/elastic.md),
so that one worker can be released (SIGUSR1, then SIGKILL after the grace) or added without
touching the others. The part is RUNNING while any worker lives; its report lists the GPUs
of the live workers, so the daemon sees a release complete.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from agent.model import JobSpec, PartKey, PartReport, Phase, ResizeRequest, StopRequest

log = logging.getLogger(__name__)

FAILED_PEER_GRACE_S = 5.0  # workers of a part whose worker failed: time to save and leave
START_FAILED_EXIT_CODE = 127  # what a shell says for "command not found"
DEFAULT_LOG_READ = 64 * 1024
MAX_LOG_READ = 1024 * 1024  # well under gRPC's default 4 MiB message limit


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    gpus: tuple[int, ...]
    worker_id: int = 0
    released: bool = False  # asked to leave (SIGUSR1): its exit does not end the job
    kill_at: float | None = None  # monotonic time to SIGKILL its group
    killed: bool = False
    exit_code: int | None = None


@dataclass
class _Part:
    spec: JobSpec
    workers: list[_Worker]  # empty when it never started
    report: PartReport
    stop_reason: str = ""

    def live(self) -> list[_Worker]:
        return [w for w in self.workers if w.exit_code is None]

    def live_gpus(self) -> tuple[int, ...]:
        return tuple(sorted(g for w in self.live() for g in w.gpus))


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"


class Runner:
    def __init__(
        self,
        state_dir: Path,
        node: str,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        gpu_indices: Iterable[int] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.node = node
        # The node's GPUs; a job asking for another one is refused. None: no check.
        self.gpu_indices = None if gpu_indices is None else frozenset(gpu_indices)
        self.logs_dir = self.state_dir / "logs"
        self.work_dir = self.state_dir / "work"
        self._wall = wall_clock
        self._mono = monotonic
        self._parts: dict[PartKey, _Part] = {}

    # --- what the daemon asks -------------------------------------------------------------

    def start(self, spec: JobSpec) -> PartReport:
        """Start a part; a bad command gives START_FAILED, never an exception."""
        known = self._parts.get(spec.key)
        if known is not None:  # idempotent: reconcile normally catches this first
            return known.report
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            logfile = open(self.log_path(spec.job_id), "ab")  # noqa: SIM115 (closed below)
        except OSError as e:
            return self._failed(spec, f"cannot open the job's log: {e}", None)
        with logfile:
            # Every attempt, even one that fails to start, leaves its header and its error in
            # the log, so that `read_log` can explain what happened.
            gpus = ",".join(map(str, spec.gpu_indices)) or "none"
            _write_line(
                logfile,
                f"--- schedulerd job {spec.job_id} attempt {spec.attempt} on node {self.node}, "
                f"GPUs {gpus} ---",
            )
            problem = self._check(spec)
            if problem:
                return self._failed(spec, problem, logfile)
            try:
                cwd = self._working_dir(spec)
                workers = [
                    self._spawn(spec, logfile, cwd, wid, gpus) for wid, gpus in _worker_plan(spec)
                ]
            except (OSError, ValueError, subprocess.SubprocessError) as e:
                return self._failed(spec, f"cannot start {spec.command[0]!r}: {e}", logfile)
        self._warn_if_shared(spec)
        pid = workers[0].proc.pid
        report = PartReport(
            spec.job_id,
            spec.attempt,
            Phase.RUNNING,
            pid=pid,
            time=self._wall(),
            gpu_indices=tuple(sorted(spec.gpu_indices)),
        )
        self._parts[spec.key] = _Part(spec, workers, report)
        log.info("job %d attempt %d started, pid %d", spec.job_id, spec.attempt, pid)
        return report

    def _spawn(
        self,
        spec: JobSpec,
        logfile: IO[bytes],
        cwd: Path,
        worker_id: int,
        gpus: tuple[int, ...],
        join: bool = False,
    ) -> _Worker:
        proc = subprocess.Popen(
            list(spec.command),
            start_new_session=True,  # its own process group: killpg reaches all of it
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=self._env(spec, gpus, worker_id, join),
        )
        return _Worker(proc, gpus, worker_id)

    def resize(self, req: ResizeRequest) -> PartReport | None:
        """Release workers (SIGUSR1 now, SIGKILL when the grace ends) and start
        joiners, in place. Unknown or ended part: nothing (None or its report)."""
        part = self._parts.get(req.key)
        if part is None or part.report.phase.ended or part.spec.elastic is None:
            return None if part is None else part.report
        deadline = self._mono() + max(0.0, req.grace_seconds)
        for worker in part.live():
            if set(worker.gpus) & set(req.release) and not worker.released:
                worker.released = True
                worker.kill_at = deadline
                log.info(
                    "job %d: releasing worker %d (GPU %s): %s",
                    req.job_id,
                    worker.worker_id,
                    worker.gpus,
                    req.reason or "shrink",
                )
                # To the worker itself, not its group: its own children (DataLoader
                # workers) would die of SIGUSR1 and fail its last step.
                _signal_worker(worker, signal.SIGUSR1, part.spec.job_id)
        if req.add:
            with open(self.log_path(req.job_id), "ab") as logfile:
                cwd = self._working_dir(part.spec)
                for wid, gpu in req.add:
                    try:
                        part.workers.append(
                            self._spawn(part.spec, logfile, cwd, wid, (gpu,), join=True)
                        )
                    except (OSError, ValueError, subprocess.SubprocessError) as e:
                        log.warning("job %d: cannot start joiner %d: %s", req.job_id, wid, e)
            part.report = replace(part.report, gpu_indices=part.live_gpus())
        return part.report

    def stop(self, req: StopRequest) -> PartReport | None:
        """SIGTERM the group now and SIGKILL it when the grace ends (checked by `poll`).

        Unknown part: None. Ended part: its report, untouched. A second stop can only shorten
        the grace, never extend it.
        """
        part = self._parts.get(req.key)
        if part is None or part.report.phase.ended:
            return None if part is None else part.report
        grace = req.grace_seconds if math.isfinite(req.grace_seconds) else 0.0
        grace = max(0.0, grace)
        deadline = self._mono() + grace
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
            if first and grace > 0 and not worker.released:
                # An elastic worker checkpoints and tears its children down itself; a
                # rigid job's whole group gets SIGTERM (SIGKILL reaches groups in both).
                if part.spec.elastic is not None:
                    _signal_worker(worker, signal.SIGTERM, req.job_id)
                else:
                    _signal_group(worker, signal.SIGTERM, req.job_id)
            worker.kill_at = deadline if worker.kill_at is None else min(worker.kill_at, deadline)
            self._kill_if_due(part, worker)
        return part.report

    def stop_all(self, grace_seconds: float, reason: str) -> None:
        for part in list(self._parts.values()):
            if not part.report.phase.ended:
                self.stop(StopRequest(part.spec.job_id, part.spec.attempt, grace_seconds, reason))

    def ack(self, job_id: int, attempt: int) -> bool:
        """Forget an ended part (the daemon has recorded it). A running part is kept."""
        part = self._parts.get((job_id, attempt))
        if part is None or not part.report.phase.ended:
            return False
        del self._parts[(job_id, attempt)]
        return True

    # --- what the agent reports -----------------------------------------------------------

    def poll(self) -> list[PartReport]:
        """Notice exits and due SIGKILLs; return the reports that changed since the last poll."""
        changed = []
        for part in list(self._parts.values()):
            if not part.workers or part.report.phase.ended:
                continue
            before = part.live_gpus()
            for worker in part.live():
                if _leader_exited(worker.proc):
                    # Kill stragglers before reaping: the zombie leader keeps the pgid ours.
                    _signal_group(worker, signal.SIGKILL, part.spec.job_id)
                    worker.exit_code = worker.proc.wait()
                else:
                    self._kill_if_due(part, worker)
            failed = [w for w in part.workers if w.exit_code and not w.released]
            if failed and part.live() and not part.stop_reason:
                # One worker of an elastic part failed: the others would only wait
                # for it until their timeout. End them now, with a short grace.
                self.stop(
                    StopRequest(
                        part.spec.job_id,
                        part.spec.attempt,
                        FAILED_PEER_GRACE_S,
                        f"worker {failed[0].worker_id} failed: "
                        + describe_exit(failed[0].exit_code or 0),
                    )
                )
            if not part.live():
                part.report = self._exited(part, _part_exit_code(part))
                changed.append(part.report)
            elif part.live_gpus() != before:  # a released worker left: say which GPUs remain
                part.report = replace(part.report, gpu_indices=part.live_gpus(), time=self._wall())
                changed.append(part.report)
        return changed

    def reports(self) -> list[PartReport]:
        """Running parts and ended parts not yet acked, in (job, attempt) order."""
        return [self._parts[k].report for k in sorted(self._parts)]

    def report(self, key: PartKey) -> PartReport | None:
        part = self._parts.get(key)
        return None if part is None else part.report

    def any_running(self) -> bool:
        return any(not p.report.phase.ended for p in self._parts.values())

    def log_path(self, job_id: int) -> Path:
        return self.logs_dir / f"job-{job_id}.log"

    def read_log(self, job_id: int, offset: int, max_bytes: int) -> tuple[bytes, bool, int]:
        """(data, found, next_offset); max_bytes 0 means a default, and it is capped."""
        limit = min(max_bytes or DEFAULT_LOG_READ, MAX_LOG_READ)
        try:
            with open(self.log_path(job_id), "rb") as f:
                f.seek(offset)
                data = f.read(limit)
        except FileNotFoundError:
            return b"", False, offset
        except OSError as e:  # the daemon still gets an answer to its request
            log.warning("cannot read the log of job %d: %s", job_id, e)
            return b"", False, offset
        return data, True, offset + len(data)

    # --- helpers --------------------------------------------------------------------------

    def _check(self, spec: JobSpec) -> str:
        """Why this spec cannot start, or "" if it can."""
        if not spec.command:
            return "empty command"
        if len(set(spec.gpu_indices)) != len(spec.gpu_indices):
            return f"GPU indices repeat: {list(spec.gpu_indices)}"
        if self.gpu_indices is not None:
            unknown = sorted(set(spec.gpu_indices) - self.gpu_indices)
            if unknown:
                have = ",".join(map(str, sorted(self.gpu_indices))) or "none"
                return f"GPU {unknown} not on node {self.node} (it has GPUs {have})"
        return ""

    def _warn_if_shared(self, spec: JobSpec) -> None:
        # The daemon is the authority on placement, so an overlap is not refused (a superseded
        # attempt may still be dying), only made visible.
        for part in self._parts.values():
            shared = set(spec.gpu_indices) & set(part.spec.gpu_indices)
            if shared and not part.report.phase.ended:
                log.warning(
                    "job %d attempt %d shares GPUs %s with job %d attempt %d",
                    spec.job_id,
                    spec.attempt,
                    sorted(shared),
                    part.spec.job_id,
                    part.spec.attempt,
                )

    def _working_dir(self, spec: JobSpec) -> Path:
        if spec.working_dir:
            return Path(spec.working_dir)  # must exist: a missing one is START_FAILED
        path = self.work_dir / f"job-{spec.job_id}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _env(
        self, spec: JobSpec, gpus: tuple[int, ...], worker_id: int, join: bool
    ) -> dict[str, str]:
        # The job's env may add to the agent's, but not override the GPU assignment or the
        # identity: those are the scheduler's word, so they are applied last.
        env = dict(os.environ)
        env.update(spec.env)
        env.update(
            {
                "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
                # CUDA's default order (fastest first) may differ from NVML's (PCI bus), and
                # the indices we hand out are NVML's.
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "SCHEDULERD_JOB_ID": str(spec.job_id),
                "SCHEDULERD_ATTEMPT": str(spec.attempt),
                "SCHEDULERD_CONSUMER": spec.consumer,
                "SCHEDULERD_USER": spec.user,
                "SCHEDULERD_JOB_NAME": spec.name,
                "SCHEDULERD_NODE": self.node,
                "SCHEDULERD_NODE_RANK": str(spec.node_rank),
                "SCHEDULERD_NUM_NODES": str(spec.num_nodes),
                "SCHEDULERD_GPUS": str(len(gpus)),
            }
        )
        elastic = spec.elastic
        if elastic is not None:  # docs/elastic.md: the contract with the workers
            # One process per GPU: like torchrun, one CPU thread each unless the job
            # says otherwise (N workers x all cores each thrash a CPU box).
            env.setdefault("OMP_NUM_THREADS", "1")
            env.update(
                {
                    "SCHEDULERD_ELASTIC": "1",
                    "SCHEDULERD_WORKER_ID": str(worker_id),
                    "SCHEDULERD_ELASTIC_INITIAL": ",".join(map(str, elastic.initial_worker_ids)),
                    "SCHEDULERD_ELASTIC_JOIN": "1" if join or elastic.join else "0",
                    "SCHEDULERD_ELASTIC_STORE": elastic.store_address,
                    "SCHEDULERD_ELASTIC_MIN": str(elastic.min),
                    "SCHEDULERD_ELASTIC_MAX": str(elastic.max),
                }
            )
        return env

    def _failed(self, spec: JobSpec, message: str, logfile: IO[bytes] | None) -> PartReport:
        log.warning("job %d attempt %d failed to start: %s", spec.job_id, spec.attempt, message)
        if logfile is not None:
            _write_line(logfile, f"--- schedulerd: {message} ---")
        report = PartReport(
            spec.job_id,
            spec.attempt,
            Phase.START_FAILED,
            exit_code=START_FAILED_EXIT_CODE,
            message=message,
            time=self._wall(),
        )
        self._parts[spec.key] = _Part(spec, [], report)
        return report

    def _exited(self, part: _Part, code: int) -> PartReport:
        message = describe_exit(code)
        if part.stop_reason:
            message += f"; stop requested: {part.stop_reason}"
        spec = part.spec
        log.info("job %d attempt %d ended: %s", spec.job_id, spec.attempt, message)
        try:
            with open(self.log_path(spec.job_id), "ab") as f:
                _write_line(
                    f,
                    f"--- schedulerd job {spec.job_id} attempt {spec.attempt} ended: {message} ---",
                )
        except OSError:
            log.debug("cannot append to the log of job %d", spec.job_id, exc_info=True)
        return PartReport(
            spec.job_id,
            spec.attempt,
            Phase.EXITED,
            exit_code=code,
            pid=part.report.pid,
            message=message,
            time=self._wall(),
        )

    def _kill_if_due(self, part: _Part, worker: _Worker) -> None:
        if worker.kill_at is not None and not worker.killed and self._mono() >= worker.kill_at:
            worker.killed = True
            log.info(
                "job %d attempt %d worker %d: grace over, SIGKILL",
                part.spec.job_id,
                part.spec.attempt,
                worker.worker_id,
            )
            _signal_group(worker, signal.SIGKILL, part.spec.job_id)


def _signal_group(worker: _Worker, sig: signal.Signals, job_id: int) -> None:
    # Only while the leader is unreaped (see the module docstring).
    if worker.proc.returncode is not None:
        return
    try:
        os.killpg(worker.proc.pid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone already
    except PermissionError:
        log.warning("not allowed to send %s to job %d", sig.name, job_id)


def _signal_worker(worker: _Worker, sig: signal.Signals, job_id: int) -> None:
    if worker.proc.returncode is not None:
        return
    try:
        os.kill(worker.proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("not allowed to send %s to job %d", sig.name, job_id)


def _worker_plan(spec: JobSpec) -> list[tuple[int, tuple[int, ...]]]:
    """(worker id, GPUs) of each process to start: one per GPU for an elastic
    part, one with all the part's GPUs otherwise."""
    if spec.elastic is None:
        return [(0, tuple(spec.gpu_indices))]
    return [(wid, (gpu,)) for wid, gpu in spec.elastic.workers]


def _part_exit_code(part: _Part) -> int:
    """The first non-zero exit of a worker that was not released, else 0: released
    workers leave on purpose (docs/elastic.md: ending)."""
    for w in sorted(part.workers, key=lambda w: w.worker_id):
        if not w.released and w.exit_code:
            return w.exit_code
    if all(w.released for w in part.workers):
        return 0
    return next(w.exit_code or 0 for w in part.workers if not w.released)


def _leader_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Has the leader exited? Does not reap it (WNOWAIT)."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True  # reaped by someone else; proc.wait() will still give a status
    return info is not None


def _write_line(f: IO[bytes], line: str) -> None:
    f.write(line.encode() + b"\n")
    f.flush()
