"""The shell's records of jobs, job parts and nodes: what the store keeps.

Mutable on purpose: the daemon holds one live copy of each (write-through, see
daemon/state.py) and the core gets frozen snapshots built from them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from schedulerd.gputype import node_gpu_type


class JobState(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"  # back in the queue after a preemption; waits like PENDING
    TIMEOUT = "TIMEOUT"  # stopped when its time limit (`--time`) ran out

    @property
    def ended(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING, JobState.PREEMPTED)

    @property
    def waiting(self) -> bool:
        return self in (JobState.PENDING, JobState.PREEMPTED)


class PartPhase(enum.Enum):
    """One job's processes on one node."""

    ASSIGNED = "assigned"  # committed by the plan; the agent has not confirmed yet
    RUNNING = "running"
    EXITED = "exited"


@dataclass
class PartRecord:
    job_id: int
    attempt: int
    node: str
    node_rank: int
    gpu_indices: list[int]
    gpu_uuids: list[str]
    phase: PartPhase = PartPhase.ASSIGNED
    exit_code: int | None = None
    pid: int | None = None
    message: str = ""
    # Elastic parts: the worker on each GPU, and GPUs a shrink is taking back.
    workers: dict[int, int] = field(default_factory=dict)
    releasing: list[int] = field(default_factory=list)


# JobRecord.array_id of an array's elements before they are stored (store.insert_job).
ARRAY_FIRST = -1


@dataclass
class JobRecord:
    id: int
    consumer: str
    user: str
    name: str
    command: list[str]
    env: dict[str, str]
    working_dir: str
    gpus_min: int
    gpus_max: int
    priority: int
    state: JobState
    submit_time: float
    start_time: float | None = None
    end_time: float | None = None
    exit_code: int | None = None
    reason: str = ""
    attempt: int = 0
    cancel_requested: bool = False
    # A stop for preemption is under way: when the parts have exited the job goes
    # back to the queue instead of ending.
    preempting: bool = False
    # Why it goes back to the queue when its parts have exited (the event's kind):
    # "preempted" (reclaim), "lost" (its node went down or lost it), "node-stopped"
    # (its agent shut down), "refused" (an agent would not start it).
    requeue_cause: str = ""
    # Why the daemon itself asked it to stop for good: "timeout" (its time limit ran
    # out) ends it TIMEOUT rather than CANCELLED.
    stop_cause: str = ""
    # When the grace of the stop or shrink under way ends (unix seconds).
    release_deadline: float | None = None
    store_address: str = ""  # host:port of the elastic store, or of a multi-node rendezvous
    next_worker_id: int = 0  # elastic: worker ids are never reused within an attempt
    # Elastic: its training has ended (worker 0, or a whole part, exited 0 without being
    # released): the rest of its workers are finishing, and it is never grown again.
    ending: bool = False
    # Submitted with a credential a node's agent vouched for (docs/security.md): such a
    # job never runs as root, whatever the policy's run_as_root (a node's root must not
    # get root on every node).
    vouched: bool = False
    # Times it was preempted (requeued for reclaim): reclaim takes a job preempted before
    # after those that were not (docs/scheduling.md, bounded disruption).
    preemptions: int = 0
    # The most it runs, as its user declared (`--time`); None: no limit.
    time_limit_s: float | None = None
    # The pool or GPU type it asked for (`--pool`); "": any (docs/pools.md).
    pool: str = ""
    # When it last began to wait (submitted, or back in the queue): reclaim acts for it
    # once its consumer's reclaim_patience has passed. None: before this was kept.
    queued_at: float | None = None
    # An element of a job array (docs/arrays.md): the array's id (its first element's
    # job id) and this element's index; 0 and 0 for a lone job. ARRAY_FIRST until
    # stored: the store gives the first element's id to its whole batch.
    array_id: int = 0
    array_index: int = 0
    parts: list[PartRecord] = field(default_factory=list)

    @property
    def elastic(self) -> bool:
        return self.gpus_max > self.gpus_min


@dataclass
class GpuRecord:
    index: int
    uuid: str
    model: str
    memory_bytes: int


@dataclass
class FenceRecord:
    """A GPU that a part may still hold although the scheduler has moved on (its node
    went down, or its job was requeued): given to nobody until the node's agent reports
    that part gone, or an admin forgets the node (SEMANTICS: invariants)."""

    gpu_index: int
    job_id: int
    attempt: int
    since: float
    reason: str


@dataclass
class NodeRecord:
    name: str
    pool: str
    gpus: list[GpuRecord]
    drained: bool = False
    drain_reason: str = ""
    last_seen: float = 0.0
    fake_gpus: bool = False
    agent_version: str = ""
    down: bool = False  # silent past the node timeout: its jobs were requeued as lost
    address: str = ""  # where workers on other nodes reach it
    epoch: int = 0  # the agent session's number, bumped at every Register
    fences: list[FenceRecord] = field(default_factory=list)

    def fenced(self) -> dict[int, FenceRecord]:
        return {f.gpu_index: f for f in self.fences}

    @property
    def gpu_type(self) -> str:
        """Its GPUs' type as a short name ("h100"), "" when mixed or unknown (fakes)."""
        return node_gpu_type([g.model for g in self.gpus])


@dataclass
class PolicyRecord:
    version: int
    text: str
    source: str
    applied_at: float


@dataclass
class EventRecord:
    time: float
    job_id: int
    kind: str
    message: str
