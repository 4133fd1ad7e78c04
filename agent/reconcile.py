"""What a daemon command means, given what this node already has. Pure: no I/O, no clock.

The daemon may deliver a command twice (it resends starts after it restarts, and commands can
cross reports on the wire), so a command is never executed blindly: it is compared with the
parts the runner knows and turned into actions. The link executes the actions in order.

Rules (each one has a row in tests/test_agent_reconcile.py):
1. StartJob for a known (job, attempt), in any phase: start nothing, re-report its state.
2. StartJob for a newer attempt while older attempts of the job run: stop each older one at
   once (no grace: the daemon has already given its place to the new attempt, and two
   attempts must not share the GPUs), then start the new one.
3. StartJob for an attempt older than one the node knows: a stale delivery; start nothing.
4. StartJob otherwise: start it.
5. StopJob for an unknown part: nothing (it ended and was acked, or never came here).
6. StopJob for an ended part: re-report it (the daemon may have missed the report).
7. StopJob for a running part: stop it with the grace asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.model import JobSpec, PartKey, PartReport, StopRequest

SUPERSEDED_GRACE_SECONDS = 0.0


@dataclass(frozen=True)
class StartPart:
    spec: JobSpec


@dataclass(frozen=True)
class StopPart:
    request: StopRequest


@dataclass(frozen=True)
class Report:
    """Send the current report of this part again."""

    key: PartKey


@dataclass(frozen=True)
class Ignore:
    """Do nothing, but say why (the link logs it)."""

    reason: str


Action = StartPart | StopPart | Report | Ignore
Command = JobSpec | StopRequest


def reconcile(command: Command, known: Iterable[PartReport]) -> list[Action]:
    parts = {r.key: r for r in known}
    if isinstance(command, StopRequest):
        return _stop(command, parts)
    return _start(command, parts)


def _start(spec: JobSpec, parts: dict[PartKey, PartReport]) -> list[Action]:
    if spec.key in parts:
        return [Report(spec.key)]  # rule 1
    same_job = [r for r in parts.values() if r.job_id == spec.job_id]
    newer = [r.attempt for r in same_job if r.attempt > spec.attempt]
    if newer:  # rule 3
        return [
            Ignore(
                f"stale start of job {spec.job_id} attempt {spec.attempt}: "
                f"attempt {max(newer)} is newer"
            )
        ]
    actions: list[Action] = [
        StopPart(
            StopRequest(
                r.job_id,
                r.attempt,
                SUPERSEDED_GRACE_SECONDS,
                f"superseded by attempt {spec.attempt}",
            )
        )
        for r in sorted(same_job, key=lambda r: r.attempt)
        if not r.phase.ended
    ]  # rule 2
    actions.append(StartPart(spec))  # rule 4
    return actions


def _stop(req: StopRequest, parts: dict[PartKey, PartReport]) -> list[Action]:
    report = parts.get(req.key)
    if report is None:
        return []  # rule 5
    if report.phase.ended:
        return [Report(req.key)]  # rule 6
    return [StopPart(req)]  # rule 7
