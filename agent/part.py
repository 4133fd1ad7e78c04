"""A job part in the runner's memory, and the pure rules about it: when it has ended, with
which exit code, and what the report says.

A part is one or more workers, each a shim (agent/shim.py) with the job's command under it,
in a cgroup of its own (agent/cgroups.py): a rigid part has one worker holding all the part's
GPUs; an elastic part has one per GPU (docs/elastic.md), so that one worker can be released
(SIGUSR1, then SIGKILL after the grace) or added without touching the others.

A worker has ended when its shim has exited and its cgroup is empty; the part, when all its
workers have. Its report lists the GPUs of the workers not ended, so the daemon sees a
release complete only once nothing of that worker holds its GPU.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field
from pathlib import Path

from agent.cgroups import Containment
from agent.jobenv import env_problem
from agent.model import JobSpec, PartReport, Phase
from agent.partstate import PartRecord, WorkerRecord
from agent.users import JobUser
from agent.worker import ShimProcess, read_status

START_FAILED_EXIT_CODE = 127  # what a shell says for "command not found"
LOST_MESSAGE = "its processes ended while the agent was away; exit status unknown"


@dataclass
class Worker(WorkerRecord):
    shim: ShimProcess | None = None  # None: no process left to watch (found gone at adoption)
    kill_at: float | None = None  # monotonic time of kill_deadline
    shim_done: bool = False  # its shim has exited and exit_code is what is known
    last_kill: float = -math.inf  # monotonic time the agent last killed its cgroup


@dataclass
class Part:
    spec: JobSpec
    workers: list[Worker]  # empty when it never started
    report: PartReport
    box: Containment  # where its cgroups are (the kind it was started with)
    user: JobUser | None = None  # who its processes run as; None when it never started
    stop_reason: str = ""
    by_node: bool = False  # stop_all(by_node=True) asked for it: the node ended it
    changed: bool = field(default=False, compare=False)  # a report poll() has not returned

    @property
    def name(self) -> str:
        """Its cgroup's name under the agent's base."""
        return f"job-{self.spec.job_id}.{self.spec.attempt}"

    def live(self) -> list[Worker]:
        return [w for w in self.workers if not w.ended]

    def live_gpus(self) -> tuple[int, ...]:
        return tuple(sorted(g for w in self.live() for g in w.gpus))

    def record(self, boot_id: str) -> PartRecord:
        return PartRecord(
            spec=self.spec,
            workers=self.workers,
            report=self.report,
            stop_reason=self.stop_reason,
            by_node=self.by_node,
            containment=self.box.kind,
            boot_id=boot_id,
            user=self.user,
        )


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"


def worker_plan(spec: JobSpec) -> list[tuple[int, tuple[int, ...]]]:
    """(worker id, GPUs) of each process to start: one per GPU for an elastic
    part, one with all the part's GPUs otherwise."""
    if spec.elastic is None:
        return [(0, tuple(spec.gpu_indices))]
    return [(wid, (gpu,)) for wid, gpu in spec.elastic.workers]


def part_exit_code(workers: list[Worker]) -> int:
    """The first non-zero exit of a worker that was not released, else 0: released
    workers leave on purpose (docs/elastic.md: ending). Unknown exits are not counted."""
    known = sorted((w for w in workers if w.exit_code is not None), key=lambda w: w.worker_id)
    for w in known:
        if not w.released and w.exit_code:
            return w.exit_code
    return 0


def exit_of(worker: Worker) -> tuple[int | None, float | None]:
    """A worker's exit status once its shim has exited (None when nobody knows it), and
    when its command exited (None when its shim did not say)."""
    status = read_status(Path(worker.status_file)) or {}
    when = status.get("time")
    when = float(when) if isinstance(when, int | float) else None
    if isinstance(status.get("exit_code"), int):
        return int(status["exit_code"]), when
    if "start_failed" in status:
        return START_FAILED_EXIT_CODE, when
    code = worker.shim.returncode() if worker.shim is not None else None
    if code is not None:
        return code, None  # no record: the shim itself was killed with its cgroup (-9)
    if worker.killed:
        return -signal.SIGKILL, None  # the agent SIGKILLed its cgroup
    return None, None


def ended_report(part: Part, now: float) -> PartReport:
    """What a part whose workers have all ended reports. Its time is when the last command
    exited, as the shims recorded it (the part may have ended while no agent watched), or
    now when a shim left no time."""
    spec = part.spec
    pid = part.report.pid
    times = [w.exit_time for w in part.workers]
    time = now if None in times or not times else max(t for t in times if t is not None)
    if all(w.exit_code is None for w in part.workers):
        return PartReport(
            spec.job_id, spec.attempt, Phase.LOST, pid=pid, message=LOST_MESSAGE, time=time
        )
    code = part_exit_code(part.workers)
    message = describe_exit(code)
    unknown = [w.worker_id for w in part.workers if w.exit_code is None]
    if unknown:
        message += f"; exit status of worker {', '.join(map(str, unknown))} unknown"
    by_lease = any((read_status(Path(w.status_file)) or {}).get("lease") for w in part.workers)
    if by_lease:
        message += "; stopped by its shim: no word from the daemon within the lease"
    elif part.stop_reason:
        message += f"; stop requested: {part.stop_reason}"
    return PartReport(
        spec.job_id,
        spec.attempt,
        Phase.EXITED,
        exit_code=code,
        pid=pid,
        message=message,
        time=time,
        stopped_by_node=part.by_node or by_lease,
    )


def refusal(part: Part, stopping: bool) -> str:
    """Why joiners may not be added to this part, or "" if they may."""
    if stopping:
        return "the agent is shutting down"
    if part.stop_reason:
        return f"the part is stopping ({part.stop_reason})"
    done = [w.worker_id for w in part.workers if w.shim_done and not w.released]
    if done:
        # The training has ended (worker 0 hosts the store; any other leaves only when
        # released or when the job ends): a joiner would wait for it in vain.
        return f"worker {done[0]} has exited"
    return ""


def spec_problem(spec: JobSpec, node: str, node_gpus: frozenset[int] | None) -> str:
    """Why this spec cannot start (START_FAILED), or "" if it can."""
    if not spec.command:
        return "empty command"
    if len(set(spec.gpu_indices)) != len(spec.gpu_indices):
        return f"GPU indices repeat: {list(spec.gpu_indices)}"
    if node_gpus is not None:
        unknown = sorted(set(spec.gpu_indices) - node_gpus)
        if unknown:
            have = ",".join(map(str, sorted(node_gpus))) or "none"
            return f"GPU {unknown} not on node {node} (it has GPUs {have})"
    return env_problem(spec.env)
