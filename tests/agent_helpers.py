"""What the agent's runner tests share: waits with deadlines, process checks, and runners on
real cgroups that leave none behind (a unique node name per test, its cgroups removed after).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from agent.cgroups import Containment, choose_containment, purge
from agent.model import PartReport
from agent.runner import Runner

T = TypeVar("T")
DEADLINE = 30.0


def wait_for(what: str, check: Callable[[], T | None], timeout: float = DEADLINE) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def wait_ended(runner: Runner, job: int, attempt: int = 0) -> PartReport:
    def ended() -> PartReport | None:
        runner.poll()
        r = runner.report((job, attempt))
        return r if r is not None and r.phase.ended else None

    return wait_for(f"job {job} attempt {attempt} to end", ended)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may linger as a zombie until reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def read_pid(path: Path) -> int:
    """A pid a job wrote (atomically, with a rename) once it is there."""
    return int(wait_for(f"{path.name} to be written", lambda: path.exists() and path.read_text()))


def python(code: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code, *args)


def sh(script: str) -> tuple[str, ...]:
    return ("/bin/sh", "-c", script)


def unique_node() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def purge_cgroups(node: str) -> None:
    """Kill whatever a test left in `node`'s cgroups and remove them all."""
    purge(node)


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def make_runner(
    state: Path, kind: str = "auto", node: str | None = None, **kwargs: object
) -> Iterator[Runner]:
    """A Runner with its own node name; at the end its jobs are killed and its cgroups gone."""
    node = node or unique_node()
    containment: Containment = choose_containment(kind, node)
    runner = Runner(state, node, containment=containment, **kwargs)  # type: ignore[arg-type]
    try:
        yield runner
    finally:
        runner.stop_all(0.0, "test teardown")

        def all_ended() -> bool:
            runner.poll()
            return not runner.any_running()

        try:
            wait_for("every job to end", all_ended)
        finally:
            purge_cgroups(node)
