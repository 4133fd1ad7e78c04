"""The agent's own value types: what a job part is asked to be and what it is.

The daemon speaks protobuf; everything inside the agent speaks these frozen dataclasses, so
that the runner and `reconcile` can be tested without gRPC. `agent.wire` converts between the
two at the edge (ARCHITECTURE: only the link touches generated types).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# A job part is one job's processes on this node, named by (job_id, attempt): a retried job
# gets a new attempt number, so an old attempt's late report never looks like the new one's.
PartKey = tuple[int, int]


class Phase(enum.Enum):
    """Where a job part is in its life (mirrors agent.proto's JobPhase)."""

    RUNNING = "running"  # the process group is alive
    EXITED = "exited"  # it ended; exit_code is set (negative: killed by signal -N)
    START_FAILED = "start_failed"  # it could not be started (bad command, bad working dir)
    # Its processes are gone and their exit status is unknown: they ended while no agent
    # was there to see it and left no status behind. Not the job's fault.
    LOST = "lost"
    # Never started: its GPUs are still held by another live part, or the agent is
    # shutting down. Not the job's fault.
    REFUSED = "refused"

    @property
    def ended(self) -> bool:
        return self is not Phase.RUNNING


def _frozen_env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(env or {}))


@dataclass(frozen=True)
class ElasticSpec:
    """An elastic job's part: one worker process per GPU (docs/elastic.md)."""

    store_address: str
    min: int
    max: int
    initial_worker_ids: tuple[int, ...] = ()
    workers: tuple[tuple[int, int], ...] = ()  # (worker id, GPU index)
    join: bool = False


@dataclass(frozen=True)
class JobSpec:
    """What the daemon asks this node to run (a StartJob message)."""

    job_id: int
    attempt: int
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, hash=False)  # a dict is unhashable
    working_dir: str = ""
    gpu_indices: tuple[int, ...] = ()
    consumer: str = ""
    user: str = ""  # the job runs as this user of the node (agent/users.py)
    name: str = ""
    node_rank: int = 0
    num_nodes: int = 1
    elastic: ElasticSpec | None = None
    # The policy lets this consumer's jobs run as root: without it a job whose user is root
    # is refused.
    allow_root: bool = False
    # HOST:PORT of node rank 0 for a job on several nodes that is not elastic: its
    # processes meet there (MASTER_ADDR/MASTER_PORT, as torch's env:// expects).
    master_address: str = ""
    # An element of a job array (docs/arrays.md): its array's id (0: none) and index.
    array_id: int = 0
    array_index: int = 0

    def __post_init__(self) -> None:
        # Frozen all the way down: a spec is a value, never edited after it arrives.
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "gpu_indices", tuple(self.gpu_indices))
        object.__setattr__(self, "env", _frozen_env(self.env))

    @property
    def key(self) -> PartKey:
        return (self.job_id, self.attempt)


@dataclass(frozen=True)
class StopRequest:
    """The daemon asks for a part to end (a StopJob message)."""

    job_id: int
    attempt: int
    grace_seconds: float
    reason: str = ""

    @property
    def key(self) -> PartKey:
        return (self.job_id, self.attempt)


@dataclass(frozen=True)
class ResizeRequest:
    """Shrink or grow a running elastic part in place (a ResizeJob message)."""

    job_id: int
    attempt: int
    release: tuple[int, ...] = ()  # GPU indices whose workers are asked to leave
    grace_seconds: float = 0.0
    add: tuple[tuple[int, int], ...] = ()  # joiners: (worker id, GPU index)
    reason: str = ""

    @property
    def key(self) -> PartKey:
        return (self.job_id, self.attempt)


@dataclass(frozen=True)
class PartReport:
    """What the agent knows of one job part (a JobReport message)."""

    job_id: int
    attempt: int
    phase: Phase
    exit_code: int = 0
    pid: int = 0
    message: str = ""
    time: float = 0.0  # unix seconds when the phase was reached
    gpu_indices: tuple[int, ...] = ()  # GPUs whose processes are alive
    # The node ended it, not the job: the agent shut down or lost its lease with the
    # daemon. The daemon puts such a job back in the queue instead of failing it.
    stopped_by_node: bool = False

    @property
    def key(self) -> PartKey:
        return (self.job_id, self.attempt)
