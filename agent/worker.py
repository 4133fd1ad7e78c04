"""The agent's end of a shim (agent/shim.py): start one, wait for its word, watch it, signal it.

A shim the agent started is its child (`ChildShim`): `waitpid` says when it ends and with
what status, and its pid cannot be reused before the agent reaps it. A shim found by a
restarted agent (`AdoptedShim`) is not: it is held through a pidfd, opened only after the
pid's start time (field 22 of /proc/<pid>/stat) has been checked against the one recorded, so
a signal never reaches a process that merely got the same pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from agent.users import JobUser

SHIM = Path(__file__).resolve().with_name("shim.py")
# In the state dir: the wall-clock time past which the daemon may have requeued this node's
# jobs (the link writes it; every shim reads it when it comes, and at least every 5 s:
# docs/fencing.md, leases).
LEASE_DEADLINE_FILE = "lease-deadline"
READY_TIMEOUT_S = 10.0  # a shim starts in ~10 ms; this is for a machine on its knees


class StartFailed(Exception):
    """The job's command could not be started; the message says why."""


class ShimProcess(Protocol):
    pid: int
    start_time: int

    def exited(self) -> bool:
        """Has the shim ended? Never blocks."""
        ...

    def returncode(self) -> int | None:
        """Its exit status (negative: killed by that signal), when the agent is its parent."""
        ...

    def send(self, sig: int) -> None:
        """Signal the shim if it still lives (never a process that reused its pid)."""
        ...

    def fileno(self) -> int:
        """A pidfd of the shim, readable once it has exited (agent/wakeups); -1 when it
        has been seen to exit, or when this kernel has no pidfds."""
        ...


class ChildShim:
    def __init__(self, proc: subprocess.Popen[bytes], child_pid: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.child_pid = child_pid  # the job's command
        self.start_time = start_time(proc.pid) or 0
        self._fd = -1  # its pidfd, opened when first asked for

    def exited(self) -> bool:
        if self.proc.poll() is None:
            return False
        self._close()
        return True

    def fileno(self) -> int:
        # Opened only while it is unreaped: until then its pid cannot be another's.
        if self._fd < 0 and self.proc.returncode is None:
            try:
                self._fd = os.pidfd_open(self.pid)
            except OSError:
                return -1  # no pidfd (Linux < 5.3): the runner looks at it on a clock
        return self._fd

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def returncode(self) -> int | None:
        return self.proc.returncode

    def send(self, sig: int) -> None:
        if self.proc.returncode is None:  # unreaped, so the pid is still the shim's
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


class AdoptedShim:
    def __init__(self, pid: int, start: int, pidfd: int) -> None:
        self.pid = pid
        self.start_time = start
        self._fd = pidfd

    @classmethod
    def find(cls, pid: int, start: int) -> AdoptedShim | None:
        """The shim with this pid and start time, if it still lives."""
        if pid <= 0:
            return None
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            return None
        if start_time(pid) != start:  # checked after opening: the fd is then surely ours
            os.close(fd)
            return None
        return cls(pid, start, fd)

    def exited(self) -> bool:
        if self._fd < 0:
            return True
        if select.select([self._fd], [], [], 0)[0]:  # a pidfd reads ready once it exited
            os.close(self._fd)
            self._fd = -1
        return self._fd < 0

    def returncode(self) -> int | None:
        return None  # its parent is someone else now

    def fileno(self) -> int:
        return self._fd

    def send(self, sig: int) -> None:
        if not self.exited():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._fd, sig)


def launch(
    command: tuple[str, ...],
    *,
    env: Mapping[str, str],
    cwd: Path,
    user: JobUser,
    switch_user: bool,
    log: IO[bytes],
    status_file: Path,
    cgroup_procs: str,
    to_group: bool,
    lease_file: Path | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a shim for `command`; (the shim, the read end of its ready pipe). The shim
    switches to `user` when `switch_user` (a root agent), and enters `cwd` as that user."""
    with contextlib.suppress(FileNotFoundError):
        status_file.unlink()  # never a previous record for this worker
    identity: tuple[str, ...] = ()
    if switch_user:
        groups = ",".join(map(str, user.groups))
        identity = ("--uid", str(user.uid), "--gid", str(user.gid), "--groups", groups)
    env_fd = _env_memfd(env)
    try:
        read_fd, write_fd = os.pipe()
    except BaseException:
        os.close(env_fd)
        raise
    try:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-I", "-S", str(SHIM)),
                *("--status", str(status_file), "--ready-fd", str(write_fd)),
                *("--env-fd", str(env_fd), "--cwd", str(cwd), "--user", user.name),
                *identity,
                *(
                    "--cgroup-procs",
                    cgroup_procs,
                    "--signal-to",
                    "group" if to_group else "process",
                ),
                *(("--lease", str(lease_file)) if lease_file is not None else ()),
                "--",
                *command,
            ],
            start_new_session=True,  # not in the agent's session or process group
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",  # the job's own working dir is entered as its user, by the shim
            pass_fds=(write_fd, env_fd),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
        os.close(env_fd)
    return proc, read_fd


def _env_memfd(env: Mapping[str, str]) -> int:
    """The job's environment in a memfd for the shim: NAME=VALUE entries ending in NUL (a
    file, not a pipe: an environment of any size is written without waiting for a reader)."""
    fd = os.memfd_create("schedulerd-job-env", os.MFD_CLOEXEC)
    data = b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in env.items())
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


def await_ready(proc: subprocess.Popen[bytes], read_fd: int, deadline: float) -> ChildShim:
    """The shim's word: its handle once the command runs; StartFailed if it cannot."""
    data = b""
    try:
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                raise StartFailed(f"the shim did not start within {READY_TIMEOUT_S:g} s")
            chunk = os.read(read_fd, 4096)
            if not chunk:
                raise StartFailed(f"the shim ended before the command started ({proc.wait()})")
            data += chunk
    finally:
        os.close(read_fd)
    word, _, rest = data.decode(errors="replace").strip().partition(" ")
    if word != "ok":
        proc.wait()
        raise StartFailed(rest)
    return ChildShim(proc, int(rest))


def read_status(path: Path) -> dict[str, Any] | None:
    """The shim's record for a worker, or None when it left none (or a broken one)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 overall; fields[0] is field 3


def boot_id() -> str:
    """Changes at every boot: no process of a record from another boot still lives."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
