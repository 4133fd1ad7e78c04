"""Job log files: appended to by the agent and the job, read back in pages for the daemon.

A log lives in a folder the job can write to (its default working dir is a sibling), so the
job could replace its log with a symlink to a file it may not read itself, or with a FIFO
that blocks the reader. Neither is followed: logs are opened with O_NOFOLLOW, and only a
regular file is read or appended to.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

DEFAULT_READ = 64 * 1024
MAX_READ = 1024 * 1024  # well under gRPC's default 4 MiB message limit


def open_for_append(path: Path) -> IO[bytes]:
    """The log, created if needed; OSError for a symlink or anything not a regular file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab")


def append_line(f: IO[bytes], line: str) -> None:
    f.write(line.encode() + b"\n")
    f.flush()


def read_page(path: Path, offset: int, max_bytes: int) -> tuple[bytes, bool, int]:
    """(data, found, next_offset); max_bytes 0 means a default, and it is capped."""
    limit = min(max_bytes or DEFAULT_READ, MAX_READ)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return b"", False, offset
    except OSError as e:  # ELOOP for a symlink; the daemon still gets an answer
        log.warning("cannot read the log %s: %s", path, e)
        return b"", False, offset
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            log.warning("the log %s is not a regular file; not read", path)
            return b"", False, offset
        data = os.pread(fd, limit, max(0, offset))
    except OSError as e:
        log.warning("cannot read the log %s: %s", path, e)
        return b"", False, offset
    finally:
        os.close(fd)
    return data, True, offset + len(data)
