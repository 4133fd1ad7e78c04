"""The one-line summary systemd shows for the daemon (`systemctl status`, STATUS=)."""

from __future__ import annotations

from collections import Counter
from operator import attrgetter

from schedulerd.daemon.state import ClusterState
from schedulerd.store import JobState


def summary(state: ClusterState) -> str:
    nodes = list(state.nodes.values())
    up = [n for n in nodes if state.schedulable(n)]
    gpus = sum(len(n.gpus) for n in up)
    # GPUs from the jobs that hold parts, states counted in one C-level pass: a Python
    # loop over every job took ~70 ms at 10,000 queued, every STATUS_EVERY_S, on the
    # event loop (issue 15: a sequential client's calls waited behind it).
    busy = sum(len(p.gpu_indices) for j in state.holding_jobs() for p in j.parts)
    states = Counter(map(_state, state.jobs.values()))
    waiting = sum(n for s, n in states.items() if s.waiting)
    running = states[JobState.RUNNING]
    return (
        f"{len(up)} of {len(nodes)} nodes schedulable, {busy} of {gpus} GPUs busy, "
        f"{waiting} jobs waiting, {running} running"
    )


_state = attrgetter("state")
