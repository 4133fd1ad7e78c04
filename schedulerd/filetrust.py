"""Reading a file that says how a privileged process runs, only if no one else could
have written it (as sshd's StrictModes refuses a key file others may change).

The config files say how a root agent starts jobs, and the policy who administers the
cluster and whose jobs may run as root: whoever can change such a file, or any folder on
its way from `/` (to replace it), acts as root. Trusted owners are root and this
process's own user. A folder others may write is fine only with the sticky bit (as
/tmp: others cannot replace what is not theirs). Both the path as given and the one its
symlinks lead to are checked.

The file is opened without blocking and must be a regular file: a FIFO put in its place
must not hang the daemon (a SIGHUP would otherwise freeze its event loop).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from pathlib import Path


class UntrustedFile(Exception):
    """The file cannot be trusted or read; the message says why (without the path)."""


def read_trusted(path: Path, most_bytes: int, *, check_writers: bool = True) -> bytes:
    """The file's bytes, at most `most_bytes + 1` of them (so that the caller can tell
    a file that is too large). Raises UntrustedFile. `check_writers=False` skips the
    owner and mode checks (a file a user reads for themselves), not the others."""
    why = _folders_untrusted(path) if check_writers else ""
    if why:
        raise UntrustedFile(why)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise UntrustedFile(e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedFile("not a regular file")
        why = _untrusted(st, "") if check_writers else ""
        if why:
            raise UntrustedFile(f"{why}; {_remedy(why, path)}")
        chunks: list[bytes] = []
        left = most_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def untrusted_folder(folder: Path) -> str:
    """Why others could put something in `folder` or replace it, or "" (for a socket
    a root process makes there)."""
    return _folders_untrusted(folder, include_self=True)


def _trusted_owners() -> set[int]:
    return {0, os.geteuid()}


def _untrusted(st: os.stat_result, what: str) -> str:
    if st.st_uid not in _trusted_owners():
        return f"{what}owned by uid {st.st_uid}, who could change it"
    sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    others_write = st.st_mode & stat.S_IWOTH
    group_write = st.st_mode & stat.S_IWGRP and not _owner_only_group(st.st_gid, st.st_uid)
    if (others_write or group_write) and not sticky_dir:
        return f"{what}writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def _owner_only_group(gid: int, uid: int) -> bool:
    """Whether no one but the owner is in the group (a user-private group, as umask 002
    setups make, or root's own): then group write adds no writer (Debian's sshd allows
    it too)."""
    try:
        group = grp.getgrgid(gid)
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    if any(member != owner for member in group.gr_mem):
        return False
    return all(p.pw_uid == uid for p in pwd.getpwall() if p.pw_gid == gid)


def _remedy(why: str, path: Path) -> str:
    return f"chown root {path}" if why.startswith("owned") else f"chmod go-w {path}"


def _folders_untrusted(path: Path, include_self: bool = False) -> str:
    """Why another user could change what `path` leads to, through any folder it passes,
    or "". Every folder the lookup goes through is checked, the folders of symlinks met
    on the way included (a link in a folder others may write can be pointed anywhere)."""
    try:
        # Not abspath: it drops `..` by the text, where the kernel goes up from wherever
        # a symlink before it led.
        folders = _traversed(Path.cwd() / path, include_self)
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    for folder in folders:
        try:
            st = os.stat(folder)
        except OSError as e:
            return f"its folder {folder}: {e.strerror or e}"
        why = _untrusted(st, f"the folder {folder} is ")
        if why:
            return f"{why}: others could replace what is in it"
    return ""


MAX_SYMLINKS = 40  # as the kernel's own limit on a lookup


def _traversed(path: Path, include_last: bool) -> list[Path]:
    """The folders a lookup of the absolute `path` goes through, one component at a time
    with its symlinks followed, in order; with `include_last`, what it ends at too."""
    folders: list[Path] = []
    todo = list(path.parts[1:])
    at = Path("/")
    links = 0
    while todo:
        name = todo.pop(0)
        folders.append(at)  # `name` is looked up in `at`: whoever may write `at` decides it
        if name == "..":
            at = at.parent
            continue
        following = at / name
        if name != "." and following.is_symlink():
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            target = Path(os.readlink(following))
            if target.is_absolute():
                at = Path("/")
            todo[:0] = [part for part in target.parts if part != "/"]
            continue
        if name != ".":
            at = following
    if include_last:
        folders.append(at)
    return list(dict.fromkeys(folders))  # each once, in order
