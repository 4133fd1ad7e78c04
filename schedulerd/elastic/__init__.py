"""Elastic data-parallel training for jobs run by schedulerd (docs/elastic.md).

Only training scripts import this package (it imports torch); the daemon and the agent
never do. Surviving workers are never restarted: at a step boundary released workers leave
(exit 0), the others re-form the process group, and joiners started by the agent are
admitted and receive the model, optimizer state, step and extras from worker 0.

    from schedulerd import elastic

    job = elastic.Job(model, optimizer, checkpoint="ckpt/state.pt").start()
    job.on_resize(lambda old, new: ...)      # rescale learning rate / batch size
    while job.step < steps:
        ...  # forward with job.model, backward, optimizer.step()
        job.sync()
    job.close()

Rigid (non-elastic) scripts can use `Checkpointer` alone: `should_stop()` turns true on
SIGTERM, `save()` is atomic, `load()` resumes.
"""

from __future__ import annotations

import os as _os

from schedulerd.elastic import signals as _signals

# Before `import torch` (a second or more): a joiner released while it starts must exit 0 at
# once rather than die of SIGUSR1's default action (docs/elastic.md, "Growing").
if _os.environ.get("SCHEDULERD_ELASTIC") == "1":
    _signals.install_release_handler(exit_at_once=_os.environ.get("SCHEDULERD_ELASTIC_JOIN") == "1")

from schedulerd.elastic.checkpoint import Checkpointer
from schedulerd.elastic.devices import backend, device
from schedulerd.elastic.env import DEFAULT_TIMEOUT_S, TIMEOUT_VAR, WorkerEnv
from schedulerd.elastic.exits import (
    STOPPED_EXIT_CODE,
    ElasticError,
    Released,
    Stopped,
)
from schedulerd.elastic.job import Job


def env() -> WorkerEnv:
    """What the agent told this worker (rank and world size live on the Job: they change)."""
    return WorkerEnv.from_environ()


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "STOPPED_EXIT_CODE",
    "TIMEOUT_VAR",
    "Checkpointer",
    "ElasticError",
    "Job",
    "Released",
    "Stopped",
    "WorkerEnv",
    "backend",
    "device",
    "env",
]
