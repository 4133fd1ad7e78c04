"""The one-line summary systemd shows for the daemon (`systemctl status`, STATUS=)."""

from __future__ import annotations

from schedulerd.daemon.state import ClusterState
from schedulerd.store import JobState


def summary(state: ClusterState) -> str:
    nodes = list(state.nodes.values())
    up = [n for n in nodes if state.schedulable(n)]
    gpus = sum(len(n.gpus) for n in up)
    busy = sum(len(p.gpu_indices) for j in state.jobs.values() for p in j.parts)
    waiting = sum(1 for j in state.jobs.values() if j.state.waiting)
    running = sum(1 for j in state.jobs.values() if j.state is JobState.RUNNING)
    return (
        f"{len(up)} of {len(nodes)} nodes schedulable, {busy} of {gpus} GPUs busy, "
        f"{waiting} jobs waiting, {running} running"
    )
