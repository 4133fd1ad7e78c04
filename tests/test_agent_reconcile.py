"""reconcile(command, known parts) -> actions: one row per rule (see agent/reconcile.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agent.model import JobSpec, PartReport, Phase, StopRequest
from agent.reconcile import Action, Command, Ignore, Report, StartPart, StopPart, reconcile


def spec(job: int, attempt: int) -> JobSpec:
    return JobSpec(job_id=job, attempt=attempt, command=("true",))


def running(job: int, attempt: int) -> PartReport:
    return PartReport(job, attempt, Phase.RUNNING, pid=1000 + job)


def exited(job: int, attempt: int, code: int = 0) -> PartReport:
    return PartReport(job, attempt, Phase.EXITED, exit_code=code)


def failed(job: int, attempt: int) -> PartReport:
    return PartReport(job, attempt, Phase.START_FAILED, exit_code=127)


def superseded(job: int, old: int, new: int) -> StopPart:
    return StopPart(StopRequest(job, old, 0.0, f"superseded by attempt {new}"))


STOP_7_0 = StopRequest(7, 0, 30.0, "preempted")


@dataclass(frozen=True)
class Case:
    rule: str
    command: Command
    known: tuple[PartReport, ...]
    expected: list[Action]


CASES = [
    Case("start of an unknown job starts it", spec(7, 0), (), [StartPart(spec(7, 0))]),
    Case(
        "start while other jobs run starts it",
        spec(7, 0),
        (running(8, 0), exited(9, 2)),
        [StartPart(spec(7, 0))],
    ),
    Case(
        "resent start of a running part re-reports", spec(7, 0), (running(7, 0),), [Report((7, 0))]
    ),
    Case(
        "resent start of an ended part re-reports", spec(7, 0), (exited(7, 0, 3),), [Report((7, 0))]
    ),
    Case("resent start of a failed part re-reports", spec(7, 0), (failed(7, 0),), [Report((7, 0))]),
    Case(
        "newer attempt stops the running older one first",
        spec(7, 1),
        (running(7, 0),),
        [superseded(7, 0, 1), StartPart(spec(7, 1))],
    ),
    Case(
        "newer attempt stops every running older one, oldest first",
        spec(7, 3),
        (running(7, 2), running(7, 0), exited(7, 1)),
        [superseded(7, 0, 3), superseded(7, 2, 3), StartPart(spec(7, 3))],
    ),
    Case(
        "newer attempt after an ended older one just starts",
        spec(7, 1),
        (exited(7, 0, 1),),
        [StartPart(spec(7, 1))],
    ),
    Case(
        "stale start of an older attempt is ignored",
        spec(7, 0),
        (running(7, 1),),
        [Ignore("stale start of job 7 attempt 0: attempt 1 is newer")],
    ),
    Case("stop of an unknown part does nothing", STOP_7_0, (), []),
    Case("stop of another attempt does nothing", STOP_7_0, (running(7, 1),), []),
    Case("stop of a running part stops it", STOP_7_0, (running(7, 0),), [StopPart(STOP_7_0)]),
    Case("stop of an ended part re-reports", STOP_7_0, (exited(7, 0, -15),), [Report((7, 0))]),
    Case("stop of a failed part re-reports", STOP_7_0, (failed(7, 0),), [Report((7, 0))]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.rule for c in CASES])
def test_reconcile(case: Case) -> None:
    assert reconcile(case.command, case.known) == case.expected


def test_reconcile_does_not_depend_on_the_order_of_known_parts() -> None:
    known = [running(7, 2), running(7, 0), exited(8, 0)]
    assert reconcile(spec(7, 3), known) == reconcile(spec(7, 3), list(reversed(known)))
