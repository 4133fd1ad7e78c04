"""What wakes the agent to look at its jobs: the kernel's word that something happened, not a
clock (docs/agent.md, "Noticing what happens").

Two kinds of source, both file descriptors in one epoll set of our own, whose own fd the event
loop watches (asyncio can only wait for a fd to be readable, and a cgroup's events file is
always readable: it signals with POLLPRI, which only an epoll set of our own can ask for):

- `Exit`: a shim's end. A pidfd reads ready once its process has exited (Linux 5.3); the
  agent holds a duplicate of the shim's own, so the pid it names can never be another's.
- `Emptied`: a cgroup v2 worker's `cgroup.events`. The kernel wakes its pollers with
  POLLPRI when `populated` (or `frozen`) changes; reading the file re-arms it. A worker
  has ended only when its cgroup is empty: this says when that happens.

A wakeup only means "look now": the runner reads the state itself (`poll`), so a spurious
wakeup costs one look and a lost one is caught by the runner's deadlines and the link's slow
backstop. `watch` is given the whole set wanted after each look and makes the epoll set
match it; a source whose event already happened before it was watched is reported as
`pending`, so that nothing that ended between the look and the watch is waited for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class HasPidfd(Protocol):
    def fileno(self) -> int:
        """A pidfd of the process, or -1 when there is none (it ended, or no pidfd here)."""
        ...


@dataclass(frozen=True)
class Exit:
    """The end of a shim: its pidfd reads ready."""

    pid: int
    start: int  # with the pid, names one process for good
    shim: HasPidfd = field(compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Emptied:
    """A change of a cgroup v2's `populated`: its cgroup.events wakes with POLLPRI."""

    events_file: str


Source = Exit | Emptied


class Wakeups:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._fds: dict[Source, int] = {}  # each watched source and our own fd for it
        self._events: set[int] = set()  # those fds that are cgroup.events files
        self.pending = False  # an event that came before its source was watched

    def fileno(self) -> int:
        """Readable while any watched source has fired and was not drained."""
        return self._epoll.fileno()

    def watch(self, wanted: Iterable[Source]) -> None:
        """Watch exactly `wanted`: new sources are opened, those no longer wanted closed."""
        want = set(wanted)
        for source in [s for s in self._fds if s not in want]:
            self._forget(source)
        for source in want - self._fds.keys():
            fd = self._open(source)
            if fd >= 0:
                self._fds[source] = fd

    def drain(self) -> int:
        """Take what fired, without waiting; cgroup.events files are read again, which
        re-arms them. Returns how many sources fired (pending ones included)."""
        fired = len(self._epoll.poll(0)) + int(self.pending)
        self.pending = False
        for fd in self._events:
            _rearm(fd)
        return fired

    def watching(self) -> int:
        return len(self._fds)

    def close(self) -> None:
        for source in list(self._fds):
            self._forget(source)
        self._epoll.close()

    def _open(self, source: Source) -> int:
        if isinstance(source, Exit):
            theirs = source.shim.fileno()
            if theirs < 0:
                return -1  # ended already (the look that follows sees it), or no pidfd
            fd = os.dup(theirs)
            self._epoll.register(fd, select.EPOLLIN)
            return fd
        try:
            fd = os.open(source.events_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.pending = True  # the cgroup is gone: its worker is over, look again
            return -1
        try:
            self._epoll.register(fd, select.EPOLLPRI)
            if not _rearm(fd):  # emptied before it was watched: its event is past
                self.pending = True
        except OSError:
            os.close(fd)
            raise
        self._events.add(fd)
        return fd

    def _forget(self, source: Source) -> None:
        fd = self._fds.pop(source)
        self._events.discard(fd)
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)
        os.close(fd)


def _rearm(fd: int) -> bool:
    """Read a cgroup.events file from the start (that is what re-arms POLLPRI); True while
    it says populated."""
    try:
        text = os.pread(fd, 256, 0)
    except OSError:
        return False  # the cgroup was removed: nothing lives there
    return b"populated 1" in text.splitlines()
