"""The shim: one per worker, between the agent and the job's command (as conmon,
containerd-shim and slurmstepd are). Standard library only, run as
`python -I -S agent/shim.py ...` so that it starts in about 10 ms and imports nothing of ours.

    shim.py --status FILE --ready-fd N [--cgroup-procs FILE] --signal-to group|process -- CMD...

1. Joins the worker's cgroup (writes "0" to FILE) before any job code exists: the command
   starts inside it, and so does everything the command forks.
2. Starts CMD as its child in a new session (its own process group). A command that cannot
   be executed is reported as {"start_failed": "..."}.
3. Says "ok <child pid>" or "error <message>" on the ready fd and closes it: the agent waits
   for this, so a bad command is START_FAILED at once and signals sent after the start find
   the handlers below in place.
4. Forwards SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 to the child's process group (a rigid part)
   or to the child alone (an elastic worker, docs/elastic.md: its own children would die of
   SIGUSR1). SIGHUP from the agent means "SIGKILL your child's group now": the shim is the
   one process that can do it without a pid-reuse race, since its child stays unreaped until
   the group has been killed.
5. When the child exits, SIGKILLs what is left of its group, writes {"exit_code": N, "time": T}
   (N < 0: killed by signal -N) to the status file atomically, and exits. So a part whose
   processes end while the agent is away still has its real exit code.
6. With `--lease FILE`: once a second, reads "DEADLINE GRACE" that the agent keeps there
   (the wall-clock time of the daemon's last word plus the daemon's lease, docs/fencing.md).
   Past it, the daemon is about to requeue the job elsewhere, so the shim stops it itself:
   SIGTERM as a stop would send it, SIGKILL GRACE seconds later, `"lease": true` in the status.
   This holds when the agent cannot: killed, or frozen. No file, or no number in it: no
   lease is known, nothing is done.

No json (its import costs as much as the interpreter's start): the two records are written
by hand.
"""

from __future__ import annotations

import os
import signal
import sys
import time

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class _State:
    child = 0  # the command's pid once started
    lease_file = ""
    lease_out = False  # the lease ran out and the shim stopped the job
    kill_at = 0.0
    reaped = False  # after this its pid (and pgid) may belong to a stranger
    to_group = True
    pending: list[int] = []  # noqa: RUF012 (signals that came before the child existed)


def _on_signal(signum: int, _frame: object) -> None:
    if not _State.child:
        _State.pending.append(signum)
        return
    if _State.reaped:
        return
    try:
        if signum == signal.SIGHUP:
            os.killpg(_State.child, signal.SIGKILL)
        elif _State.to_group:
            os.killpg(_State.child, signum)
        else:
            os.kill(_State.child, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _check_lease(_signum: int, _frame: object) -> None:
    """SIGALRM, once a second: stop the job if the agent's lease with the daemon ran out."""
    if _State.reaped or not _State.child:
        return
    now = time.time()
    if _State.lease_out:
        if now >= _State.kill_at:
            _on_signal(signal.SIGHUP, None)  # SIGKILL to the child's group
        return
    try:
        with open(_State.lease_file, "rb") as f:
            fields = f.read(64).split()
        deadline, grace = float(fields[0]), float(fields[1])
    except (OSError, ValueError, IndexError):
        return
    if now > deadline:  # NaN compares false: no lease known
        _State.lease_out = True
        _State.kill_at = now + grace
        print(
            "schedulerd shim: no word from the daemon within the lease: stopping the job",
            file=sys.stderr,
            flush=True,
        )
        _on_signal(signal.SIGTERM, None)  # as a stop would: the group, or an elastic worker


def _json_str(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def _write_status(path: str, body: str) -> None:
    """tmp + fsync + rename + fsync of the folder: the record is whole or absent."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, body.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i] != "--":
        opts[argv[i].lstrip("-")] = argv[i + 1]
        i += 2
    return opts, argv[i + 1 :]


def _say(fd: int, line: str) -> None:
    try:
        os.write(fd, line.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass  # the agent is gone: the status file is what counts now


def main(argv: list[str]) -> int:
    opts, command = _parse(argv)
    status, ready = opts["status"], int(opts["ready-fd"])
    os.set_inheritable(ready, False)  # the job must not hold the agent's pipe open
    _State.to_group = opts.get("signal-to", "group") == "group"
    for sig in (*FORWARDED, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        if opts.get("cgroup-procs"):
            fd = os.open(opts["cgroup-procs"], os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        if not command:
            raise ValueError("empty command")
        # Python ignores SIGPIPE and SIGXFSZ; the job gets the defaults, as subprocess does.
        child = os.posix_spawnp(
            command[0],
            command,
            os.environ,
            setsid=True,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, *FORWARDED, signal.SIGHUP),
        )
    except (OSError, ValueError) as e:
        message = str(e)
        try:  # for an agent that died meanwhile; this one hears it on the pipe
            body = f'{{"start_failed": {_json_str(message)}, "time": {time.time()!r}}}'
            _write_status(status, body)
        except OSError:
            pass
        _say(ready, f"error {message}")
        return 127
    _State.child = child
    _say(ready, f"ok {child}")
    for signum in _State.pending:
        _on_signal(signum, None)
    if opts.get("lease"):
        _State.lease_file = opts["lease"]
        signal.signal(signal.SIGALRM, _check_lease)
        signal.setitimer(signal.ITIMER_REAL, 1.0, 1.0)  # waitid is resumed (PEP 475)

    # Wait without reaping, kill the stragglers while the pgid is still the child's, then reap.
    info = None
    while info is None:
        info = os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)
    signal.setitimer(signal.ITIMER_REAL, 0)
    _on_signal(signal.SIGHUP, None)
    _State.reaped = True
    _, wait_status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    lease = ', "lease": true' if _State.lease_out else ""
    try:
        _write_status(status, f'{{"exit_code": {code}, "time": {time.time()!r}{lease}}}')
    except OSError as e:
        print(f"schedulerd shim: cannot write {status}: {e}", file=sys.stderr)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
