"""A SIGHUP before the program can reload must not kill it.

SIGHUP's default action ends the process, and systemd's Restart=on-failure counts that as
a clean exit: a `systemctl reload` queued behind a slow start (opening a large store)
would leave the daemon down for good. So the first thing `main()` does is hold SIGHUP;
once the event loop's handler is in place, a held one becomes one reload."""

from __future__ import annotations

import signal
from types import FrameType


class HeldHangup:
    def __init__(self) -> None:
        self.pending = False

    def hold(self) -> HeldHangup:
        signal.signal(signal.SIGHUP, self._record)
        # Restart interrupted system calls, as asyncio's own handler will: a SIGHUP in
        # the start must not fail a read of the store with EINTR.
        signal.siginterrupt(signal.SIGHUP, False)
        return self

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True

    def take(self) -> bool:
        """Whether a SIGHUP came while held; the caller reloads once if so."""
        pending, self.pending = self.pending, False
        return pending
