"""Job log files: appended to by the agent and the job, read back in pages for the daemon.

A job's log is `job.log` in the job's log folder (agent/jobdirs.py), which belongs to the
job's user: the job may replace its log there with a symlink to a file it may not read
itself (/etc/shadow), a FIFO that would block the reader, or a hard link to a file of root's
(where fs.protected_hardlinks is off). The agent, root, must serve none of them and write to
none of them. So the folder is opened with O_DIRECTORY|O_NOFOLLOW, the log relative to it with
O_NOFOLLOW|O_NONBLOCK, and only a regular file owned by the folder's owner, the job's user, is
read or appended to: what that user owns it could read and write anyway.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

LOG_NAME = "job.log"
DEFAULT_READ = 64 * 1024
MAX_READ = 1024 * 1024  # well under gRPC's default 4 MiB message limit


class NotALog(OSError):
    """The log's name is taken by something the agent must not read or write."""


def open_for_append(folder: Path) -> IO[bytes]:
    """The log in `folder`, made if needed (owned as the folder is); OSError when it cannot
    be, NotALog for anything but a regular file of the folder's owner."""
    dfd = _open_folder(folder)
    try:
        owner = os.fstat(dfd)
        fd = _open_or_make(dfd, owner)
    finally:
        os.close(dfd)
    try:
        _check(fd, owner, folder)
    except OSError:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab")


def _open_or_make(dfd: int, owner: os.stat_result) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        # O_EXCL: a file made here is surely the agent's own new one, safe to give away.
        fd = os.open(LOG_NAME, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
    except FileExistsError:
        return os.open(LOG_NAME, flags, dir_fd=dfd)
    if owner.st_uid != os.geteuid():  # a root agent, for a job's user
        try:
            os.fchown(fd, owner.st_uid, owner.st_gid)
        except OSError:
            os.close(fd)
            raise
    return fd


def append_line(f: IO[bytes], line: str) -> None:
    f.write(line.encode() + b"\n")
    f.flush()


def read_page(folder: Path, offset: int, max_bytes: int) -> tuple[bytes, bool, int]:
    """(data, found, next_offset) of the log in `folder`; max_bytes 0 means a default, and
    it is capped. Anything but a regular file of the folder's owner is no log (found false)."""
    limit = min(max_bytes or DEFAULT_READ, MAX_READ)
    try:
        dfd = _open_folder(folder)
    except FileNotFoundError:
        return b"", False, offset
    except OSError as e:  # ELOOP, ENOTDIR: not a folder the agent made; still an answer
        log.warning("cannot read the log in %s: %s", folder, e)
        return b"", False, offset
    try:
        owner = os.fstat(dfd)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(LOG_NAME, flags, dir_fd=dfd)
    except FileNotFoundError:
        return b"", False, offset
    except OSError as e:  # ELOOP for a symlink
        log.warning("cannot read the log in %s: %s", folder, e)
        return b"", False, offset
    finally:
        os.close(dfd)
    try:
        _check(fd, owner, folder)
        data = os.pread(fd, limit, max(0, offset))
    except NotALog as e:
        log.warning("%s", e)
        return b"", False, offset
    except OSError as e:
        log.warning("cannot read the log in %s: %s", folder, e)
        return b"", False, offset
    finally:
        os.close(fd)
    return data, True, offset + len(data)


def _open_folder(folder: Path) -> int:
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _check(fd: int, owner: os.stat_result, folder: Path) -> None:
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        raise NotALog(f"the log in {folder} is not a regular file; not used")
    if found.st_uid != owner.st_uid:
        raise NotALog(
            f"the log in {folder} belongs to uid {found.st_uid}, not to the job's user "
            f"(uid {owner.st_uid}); not used"
        )
