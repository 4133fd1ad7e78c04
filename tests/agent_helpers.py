"""What the agent's runner tests share: waits with deadlines, process checks, runners on
real cgroups that leave none behind (a unique node name per test, its cgroups removed after),
and job specs of the test's own user (root, most often: allowed to run as root).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from agent.cgroups import Containment, choose_containment, purge
from agent.model import JobSpec, PartReport
from agent.runner import Runner

T = TypeVar("T")
DEADLINE = 30.0


ME = pwd.getpwuid(os.geteuid()).pw_name  # the agents of the tests run as this user


def job_spec(job_id: int, attempt: int, command: tuple[str, ...], **fields: Any) -> JobSpec:
    """A JobSpec of the test's own user, which may be root (tests/test_agent_users.py has
    the jobs of other users)."""
    fields.setdefault("user", ME)
    fields.setdefault("allow_root", True)
    return JobSpec(job_id, attempt, command, **fields)


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


class Users:
    """Throwaway Unix users and groups, made with useradd and groupadd (names sdu-<hex> and
    sdg-<hex>): see `throwaway_users`, which always removes them."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.groups: list[str] = []

    def add(self, groups: tuple[str, ...] = ()) -> pwd.struct_passwd:
        """A new user with a home, a group of its own, and these supplementary groups."""
        name = f"sdu-{secrets.token_hex(4)}"
        self.users.append(name)  # before useradd: one that half-failed is removed too
        extra = ("--groups", ",".join(groups)) if groups else ()
        subprocess.run(
            ["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", *extra, name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)

    def group(self) -> grp.struct_group:
        name = f"sdg-{secrets.token_hex(4)}"
        self.groups.append(name)
        subprocess.run(["groupadd", name], check=True, capture_output=True)
        return grp.getgrnam(name)

    def remove_all(self) -> None:
        for name in self.users:
            with contextlib.suppress(KeyError):
                kill_processes_of(pwd.getpwnam(name).pw_uid)
            subprocess.run(["userdel", "--remove", name], capture_output=True)
            # Its own group, where userdel did not take it (USERGROUPS_ENAB no).
            subprocess.run(["groupdel", name], capture_output=True)
        for name in self.groups:
            subprocess.run(["groupdel", name], capture_output=True)


@contextlib.contextmanager
def throwaway_users() -> Iterator[Users]:
    users = Users()
    try:
        yield users
    finally:
        users.remove_all()


def kill_processes_of(uid: int) -> None:
    """SIGKILL, pid by pid, what a throwaway user of the tests still runs (userdel refuses a
    user with processes)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile
            status = (entry / "status").read_text()
            real = next(line.split()[1] for line in status.splitlines() if line[:4] == "Uid:")
            if int(real) == uid:
                kill_quietly(int(entry.name))


@contextlib.contextmanager
def open_dir() -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path is under a 0700 one), removed after."""
    path = Path(tempfile.mkdtemp(prefix="sdu-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
