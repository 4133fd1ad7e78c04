"""The schedulerd node agent: GPU discovery, a job runner and the link to the daemon.

One agent runs per GPU node (`schedulerd-agent`, see agent.main). It tells the daemon which
GPUs the node has, starts and stops job parts when told, and reports what they do.
"""

__version__ = "0.1.0"

from agent.gpus import (
    FakeBackend,
    GpuBackend,
    GpuDevice,
    NoGpusFound,
    NvmlBackend,
    choose_backend,
)
from agent.link import Identity, Link
from agent.model import JobSpec, PartKey, PartReport, Phase, StopRequest
from agent.reconcile import Action, Ignore, Report, StartPart, StopPart, reconcile
from agent.runner import Runner

__all__ = [
    "Action",
    "FakeBackend",
    "GpuBackend",
    "GpuDevice",
    "Identity",
    "Ignore",
    "JobSpec",
    "Link",
    "NoGpusFound",
    "NvmlBackend",
    "PartKey",
    "PartReport",
    "Phase",
    "Report",
    "Runner",
    "StartPart",
    "StopPart",
    "StopRequest",
    "__version__",
    "choose_backend",
    "reconcile",
]
