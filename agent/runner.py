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
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agent.model import JobSpec, PartKey, PartReport, Phase, StopRequest

log = logging.getLogger(__name__)

START_FAILED_EXIT_CODE = 127  # what a shell says for "command not found"
DEFAULT_LOG_READ = 64 * 1024
MAX_LOG_READ = 1024 * 1024  # well under gRPC's default 4 MiB message limit


@dataclass
class _Part:
    spec: JobSpec
    proc: subprocess.Popen[bytes] | None  # None when it never started
    report: PartReport
    kill_at: float | None = None  # monotonic time to SIGKILL the group; set by stop()
    killed: bool = False
    stop_reason: str = ""


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
                proc = subprocess.Popen(
                    list(spec.command),
                    start_new_session=True,  # its own process group: killpg reaches all of it
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=self._env(spec),
                )
            except (OSError, ValueError, subprocess.SubprocessError) as e:
                return self._failed(spec, f"cannot start {spec.command[0]!r}: {e}", logfile)
        self._warn_if_shared(spec)
        report = PartReport(
            spec.job_id, spec.attempt, Phase.RUNNING, pid=proc.pid, time=self._wall()
        )
        self._parts[spec.key] = _Part(spec, proc, report)
        log.info("job %d attempt %d started, pid %d", spec.job_id, spec.attempt, proc.pid)
        return report

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
        if part.kill_at is None:
            part.stop_reason = req.reason or "stop requested"
            log.info(
                "stopping job %d attempt %d (%s), grace %.1f s",
                req.job_id,
                req.attempt,
                part.stop_reason,
                grace,
            )
            if grace > 0:
                self._signal_group(part, signal.SIGTERM)
            part.kill_at = deadline
        else:
            part.kill_at = min(part.kill_at, deadline)
        self._kill_if_due(part)
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
            if part.proc is None or part.report.phase.ended:
                continue
            if _leader_exited(part.proc):
                # Kill stragglers before reaping: the zombie leader keeps the pgid ours.
                self._signal_group(part, signal.SIGKILL)
                code = part.proc.wait()
                part.report = self._exited(part, code)
                changed.append(part.report)
            else:
                self._kill_if_due(part)
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

    def _env(self, spec: JobSpec) -> dict[str, str]:
        # The job's env may add to the agent's, but not override the GPU assignment or the
        # identity: those are the scheduler's word, so they are applied last.
        env = dict(os.environ)
        env.update(spec.env)
        env.update(
            {
                "CUDA_VISIBLE_DEVICES": ",".join(map(str, spec.gpu_indices)),
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
                "SCHEDULERD_GPUS": str(len(spec.gpu_indices)),
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
        self._parts[spec.key] = _Part(spec, None, report)
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

    def _kill_if_due(self, part: _Part) -> None:
        if part.kill_at is not None and not part.killed and self._mono() >= part.kill_at:
            part.killed = True
            log.info("job %d attempt %d: grace over, SIGKILL", part.spec.job_id, part.spec.attempt)
            self._signal_group(part, signal.SIGKILL)

    def _signal_group(self, part: _Part, sig: signal.Signals) -> None:
        # Only while the leader is unreaped (see the module docstring).
        if part.proc is None or part.proc.returncode is not None:
            return
        try:
            os.killpg(part.proc.pid, sig)
        except ProcessLookupError:
            pass  # the whole group is gone already
        except PermissionError:
            log.warning("not allowed to send %s to job %d", sig.name, part.spec.job_id)


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
