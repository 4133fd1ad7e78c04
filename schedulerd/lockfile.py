"""One process per store, one agent per state dir: an exclusive lock on a file beside it.

Two daemons on one SQLite file would both decide (one waiting job started on two nodes);
two agents on one state dir would both adopt the same parts. `flock` is released by the
kernel when the process dies, however it dies, so a SIGKILLed owner never blocks its
successor.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyLocked(RuntimeError):
    """Another live process holds the lock; the message names the file and its pid."""


def hold(path: Path, what: str) -> int:
    """Lock `path` (created if needed) for the life of this process; the open fd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyLocked(
            f"{what} is in use by another process (pid {owner}; lock {path})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
