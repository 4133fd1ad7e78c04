"""What the daemon tells agents, before it becomes protobuf (rpc layer only)."""

from __future__ import annotations

from dataclasses import dataclass

from schedulerd.store import JobRecord, PartRecord


@dataclass(frozen=True)
class StartPart:
    job: JobRecord
    part: PartRecord
    # The policy lets this consumer's jobs of root run as root (run_as_root); the
    # agent refuses a job of root otherwise (docs/security.md).
    allow_root: bool = False


@dataclass(frozen=True)
class ResizePart:
    """Shrink (release workers) or grow (add workers) an elastic job's part."""

    job_id: int
    attempt: int
    release: tuple[int, ...]  # GPU indices
    grace_s: float
    add: tuple[tuple[int, int], ...]  # (worker id, GPU index)
    reason: str


@dataclass(frozen=True)
class StopPart:
    job_id: int
    attempt: int
    grace_s: float
    reason: str


@dataclass(frozen=True)
class AckPart:
    job_id: int
    attempt: int


Command = StartPart | StopPart | AckPart | ResizePart
# Commands addressed to nodes: (node name, command).
Outbox = list[tuple[str, Command]]
