"""Starting a part's workers: each in its own cgroup, under its own shim, with the job's
environment; all or none.

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

from agent.model import JobSpec
from agent.part import Part, Worker
from agent.worker import READY_TIMEOUT_S, StartFailed, await_ready, launch


def spawn_workers(
    part: Part,
    plan: Sequence[tuple[int, tuple[int, ...]]],
    *,
    logfile: IO[bytes],
    cwd: Path,
    envs: Mapping[int, Mapping[str, str]],
    status_dir: Path,
    lease_file: Path | None = None,
) -> list[Worker]:
    """Start one worker per (worker id, GPUs) of `plan`. Raises StartFailed or OSError (a bad
    working dir) with nothing left running."""
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


def job_env(
    spec: JobSpec, node: str, gpus: tuple[int, ...], worker_id: int, join: bool
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
            "SCHEDULERD_NODE": node,
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
