"""systemd's service notification protocol (sd_notify), for the daemon and the agent.

The protocol is a datagram of `KEY=VALUE` lines to the AF_UNIX socket named by
`$NOTIFY_SOCKET` (a leading `@` names an abstract socket). It is documented in
sd_notify(3) and stable; the PyPI wrappers are stale or need libsystemd headers
(FIELD-NOTES), so this is the few lines of socket code it takes. Outside systemd
(no `$NOTIFY_SOCKET`) every call does nothing.

What we send (docs/deploy.md):
- `READY=1` once the service does its job (the daemon serves gRPC; the agent has
  adopted its jobs and asks the daemon for work), so `systemctl start` returns then;
- `STATUS=...` a one-line summary (`systemctl status` shows it);
- `WATCHDOG=1` from the loop that must not wedge, at least twice per `$WATCHDOG_USEC`
  (0.2 s at the least): systemd restarts the service when the pings stop;
- `RELOADING=1` + `MONOTONIC_USEC` then `READY=1` around a SIGHUP reload, and
  `STOPPING=1` at shutdown.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("schedulerd.sdnotify")

# A STATUS line is one line of `systemctl status`; keep it short and printable.
MAX_STATUS_CHARS = 200
MIN_WATCHDOG_S = 0.2


class Notifier:
    """Sends notifications to systemd when started by it; a no-op otherwise."""

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_interval(env, pid)
        self._sock: socket.socket | None = None
        self._last_watchdog = 0.0
        self._last_status = ""
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # A child (a job, the local agent) must not think it was started by systemd.
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            if environ is None:
                os.environ.pop(key, None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str, tries: int = 1) -> None:
        """Never blocks: a manager that does not read (its queue is full) must not stall
        the event loop this is called from. A datagram that finds the queue full is
        dropped, or tried again `tries` times, 50 ms apart (READY and STOPPING, whose
        loss would make systemd time the start or stop out)."""
        if self._sock is None or self._address is None:
            return
        data = "\n".join(lines).encode()
        for attempt in range(tries):
            try:
                self._sock.sendto(data, socket.MSG_DONTWAIT, self._address)
                return
            except BlockingIOError:
                if attempt + 1 < tries:
                    time.sleep(0.05)
            except OSError as e:  # systemd gone or restarting: nothing to do
                log.debug("sd_notify %s: %s", lines[0] if lines else "", e)
                return
        log.debug("sd_notify %s: the manager's queue is full; dropped", lines[0])

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([_status_line(status)] if status else []), tries=40)
        self._last_status = status

    def status(self, text: str) -> None:
        """Send STATUS only when it changed: `systemctl status` keeps the last one."""
        if text != self._last_status:
            self._last_status = text
            self.send(_status_line(text))

    def watchdog(self) -> None:
        """A ping from the loop whose progress it vouches for; sent at most four times per
        interval systemd asked for (more would only cost datagrams)."""
        if self.watchdog_s is None:
            return
        now = time.monotonic()
        if now - self._last_watchdog >= self.watchdog_s / 4:
            self._last_watchdog = now
            self.send("WATCHDOG=1")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str = "") -> None:
        self.send("STOPPING=1", *([_status_line(status)] if status else []), tries=40)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # an abstract socket
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract: not notifying", value)
    return None


def _watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds within which systemd wants a WATCHDOG=1, or None when it wants none.
    WATCHDOG_PID, when set, names the process meant (not a child that inherited it)."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        return None
    if seconds <= 0:
        return None
    # A loop fed faster than this would spin; a service asked for pings more often than
    # this gets them this often (no real WatchdogSec is that short).
    return max(seconds, MIN_WATCHDOG_S)


def _status_line(text: str) -> str:
    one_line = " ".join(text.split())
    return "STATUS=" + one_line[:MAX_STATUS_CHARS]


def loop_wait_s(tick_s: float, notifier: Notifier) -> float:
    """How long a loop may sleep between turns: its tick, but short enough that its
    watchdog pings come at least twice per interval."""
    if notifier.watchdog_s is None:
        return tick_s
    return min(tick_s, notifier.watchdog_s / 2)
