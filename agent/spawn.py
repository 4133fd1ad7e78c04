"""Starting a part's workers: each in its own cgroup, under its own shim, as the job's user
with the job's environment (agent/jobenv.py); all or none.

The shims of a part start side by side and the agent then waits for each one's word (it
comes once the command runs, see agent/shim.py), so an elastic part of 8 workers costs about
one shim start, not eight. If one cannot start, the others are killed and the part is
START_FAILED: a part is never left half started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from agent.part import Part, Worker
from agent.users import JobUser
from agent.worker import READY_TIMEOUT_S, StartFailed, await_ready, launch


def spawn_workers(
    part: Part,
    plan: Sequence[tuple[int, tuple[int, ...]]],
    *,
    user: JobUser,
    switch_user: bool,
    logfile: IO[bytes],
    cwd: Path,
    envs: Mapping[int, Mapping[str, str]],
    status_dir: Path,
    lease_file: Path | None = None,
) -> list[Worker]:
    """Start one worker per (worker id, GPUs) of `plan`, as `user` (switched to when
    `switch_user`). Raises StartFailed (a bad command or working dir) or OSError with nothing
    left running."""
    spec = part.spec
    cgroups: list[str] = []
    launched: list[tuple[Worker, subprocess.Popen[bytes], int]] = []
    try:
        for wid, gpus in plan:
            cgroups.append(part.box.create(part.name, wid))
            status = status_dir / f"{spec.job_id}.{spec.attempt}.w{wid}.json"
            proc, ready_fd = launch(
                spec.command,
                env=envs[wid],
                cwd=cwd,
                user=user,
                switch_user=switch_user,
                log=logfile,
                status_file=status,
                cgroup_procs=part.box.procs_file(cgroups[-1]),
                to_group=spec.elastic is None,
                lease_file=lease_file,
            )
            launched.append((Worker(wid, gpus, cgroups[-1], str(status)), proc, ready_fd))
    except BaseException:
        _abort(part, launched, cgroups)
        raise
    deadline = time.monotonic() + READY_TIMEOUT_S
    problem: StartFailed | None = None
    for i, (worker, proc, ready_fd) in enumerate(launched):
        launched[i] = (worker, proc, -1)  # await_ready closes it
        try:
            shim = await_ready(proc, ready_fd, deadline)
        except StartFailed as e:
            problem = problem or e
            continue
        worker.shim = shim
        worker.shim_pid, worker.shim_start = shim.pid, shim.start_time
        worker.child_pid = shim.child_pid
    if problem is not None:
        _abort(part, launched, cgroups)
        raise problem
    return [worker for worker, _, _ in launched]


def _abort(
    part: Part, launched: list[tuple[Worker, subprocess.Popen[bytes], int]], cgroups: list[str]
) -> None:
    """Kill what was started of a part that cannot start, and remove its traces."""
    for _, proc, ready_fd in launched:
        if ready_fd >= 0:
            os.close(ready_fd)
        # SIGHUP: a shim that has its handlers kills its command's group; one that has
        # not yet dies of it before it could start anything.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGHUP)
    for cgroup in cgroups:
        part.box.kill(cgroup)
    for worker, proc, _ in launched:
        try:
            proc.wait(timeout=READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.status_file)
    deadline = time.monotonic() + READY_TIMEOUT_S
    for cgroup in cgroups:
        while part.box.populated(cgroup) and time.monotonic() < deadline:
            time.sleep(0.005)
    part.box.remove(cgroups)
