"""A sampler for the first invariant (SEMANTICS): no GPU held by two jobs, counting
processes as the node sees them, not the daemon's records.

Every few tens of milliseconds it reads ListNodes, then every process of the machine
whose environment names a schedulerd job (`SCHEDULERD_JOB_ID`, `SCHEDULERD_ATTEMPT`,
`SCHEDULERD_NODE`, `CUDA_VISIBLE_DEVICES`: set by the agent at exec, so escaped,
daemonized and adopted processes are all seen). Two kinds of violation:

- two live processes of different (job, attempt) on the same (node, GPU);
- the daemon shows a GPU held by job B while a process of another job still runs
  on it (ListNodes is read first: a process alive after is alive then too).

It also records every moment where one job runs as two attempts at once, anywhere
(`twice`): not a GPU violation, but what a partition must not cause either.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

Holder = tuple[int, int]  # (job id, attempt)
Gpu = tuple[str, int]  # (node, GPU index)


def job_processes() -> dict[int, tuple[str, Holder, tuple[int, ...]]]:
    """pid -> (node, (job, attempt), GPU indices) for every live job process."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            raw = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        job = env.get(b"SCHEDULERD_JOB_ID")
        if job is None:
            continue
        gpus = env.get(b"CUDA_VISIBLE_DEVICES", b"")
        found[int(entry.name)] = (
            env.get(b"SCHEDULERD_NODE", b"").decode(),
            (int(job), int(env.get(b"SCHEDULERD_ATTEMPT", b"0"))),
            tuple(int(g) for g in gpus.split(b",") if g.strip()),
        )
    return found


def holders_by_gpu(procs: Iterable[tuple[str, Holder, tuple[int, ...]]]) -> dict[Gpu, set[Holder]]:
    by_gpu: dict[Gpu, set[Holder]] = defaultdict(set)
    for node, holder, gpus in procs:
        for gpu in gpus:
            by_gpu[(node, gpu)].add(holder)
    return by_gpu


class GpuSampler(threading.Thread):
    def __init__(
        self,
        daemon_view: Callable[[], dict[Gpu, int]] | None = None,
        every_s: float = 0.05,
        nodes: Iterable[str] | None = None,
    ) -> None:
        """`nodes`: only the processes of these nodes (a test's own), default all."""
        super().__init__(daemon=True)
        self.daemon_view = daemon_view
        self.nodes = None if nodes is None else set(nodes)
        self.every_s = every_s
        self.samples = 0
        self.violations: list[str] = []
        self.twice: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            view: dict[Gpu, int] = {}
            if self.daemon_view is not None:
                try:
                    view = self.daemon_view()
                except Exception:  # the daemon may be restarting: sample processes only
                    view = {}
            procs = [
                p for p in job_processes().values() if self.nodes is None or p[0] in self.nodes
            ]
            by_gpu = holders_by_gpu(procs)
            self.samples += 1
            attempts: dict[int, set[int]] = defaultdict(set)
            for _, (job, attempt), _ in procs:
                attempts[job].add(attempt)
            self.twice += [
                f"job {j} runs as attempts {sorted(a)}" for j, a in attempts.items() if len(a) > 1
            ]
            for gpu, holders in by_gpu.items():
                if len(holders) > 1:
                    self.violations.append(f"{gpu} held by {sorted(holders)} at once")
                shown = view.get(gpu, 0)
                if shown and any(job != shown for job, _ in holders):
                    self.violations.append(f"{gpu} given to job {shown} while {holders} run")

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def daemon_view_of(nodes: Callable[[], list]) -> Callable[[], dict[Gpu, int]]:  # type: ignore[type-arg]
    """ListNodes as {(node, GPU): job id} for the GPUs the daemon says are held."""

    def view() -> dict[Gpu, int]:
        return {(n.name, g.index): g.job_id for n in nodes() for g in n.gpus if g.job_id}

    return view
