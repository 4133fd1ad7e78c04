"""The shim: one per worker, between the agent and the job's command (as conmon,
containerd-shim and slurmstepd are). Standard library only, run as
`python -I -S agent/shim.py ...` so that it starts in about 10 ms and imports nothing of ours.

    shim.py --status FILE --ready-fd N --env-fd N --cwd DIR --user NAME
            [--uid U --gid G --groups G1,G2,...] [--cgroup-procs FILE]
            --signal-to group|process [--lease FILE] -- CMD...

The shim runs as the agent's user (root) with the agent's environment, never the job's (a
root process started with the job's LD_PRELOAD would run the job's code as root). The job's
environment comes on --env-fd (a memfd of NAME=VALUE entries, each ending in NUL).

1. Joins the worker's cgroup (writes "0" to FILE) before any job code exists: the command
   starts inside it, and so does everything the command forks. Its cgroup files stay root's.
2. Forks the command's process, which, in this order: starts a new session (its own process
   group); takes the job's identity (setgroups, setgid, setuid: for good, as root can);
   sets the umask; enters the working dir, as the job's user, so that a folder the user may
   not enter is refused (subprocess would chdir before dropping root); execs CMD with the
   job's environment. A step that fails is reported as {"start_failed": "..."}.
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
6. With `--lease FILE`: reads "DEADLINE GRACE" that the agent keeps there (the wall-clock
   time of the daemon's last word plus the daemon's lease, docs/fencing.md) when that
   deadline comes, and at least every LEASE_LOOK_MAX_S meanwhile (a lease the daemon
   shortened, a file that appeared): not once a second, which cost every job's shim 60
   wakeups a minute while its deadline, a minute away, kept moving on.
   Past it, the daemon is about to requeue the job elsewhere, so the shim stops it itself:
   SIGTERM as a stop would send it, SIGKILL GRACE seconds later, `"lease": true` in the status.
   This holds when the agent cannot: killed, or frozen. No file, or no number in it: no
   lease is known, nothing is done.

No json (its import costs as much as the interpreter's start): the two records are written
by hand.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

TYPE_CHECKING = False  # typing alone costs 10 ms at every start
if TYPE_CHECKING:
    from typing import NoReturn

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
# Held back from the fork until the command's process has its default handlers: one that came
# in between would otherwise run the shim's handler in the child and be lost.
HELD = (*FORWARDED, signal.SIGHUP)
# Python ignores SIGPIPE and SIGXFSZ; the job gets the defaults, as subprocess does.
DEFAULTED = (*HELD, signal.SIGPIPE, signal.SIGXFSZ)
# The job's files are written as its user's command run by hand would (022 is the login
# default of Debian and most distributions): a group or a team reading its checkpoints keeps
# working. What must stay private is in its 0700 folders (its log's and its default working
# dir), whatever the umask; a job that wants more sets its own.
JOB_UMASK = 0o022
# The lease file is read when its deadline comes, and at least this often: a lease the daemon
# shortened (a new node timeout) or a deadline file that appeared is seen within it. A shim
# then still stops its job before the daemon requeues it (at twice the lease) for any lease
# longer than this plus its grace (a quarter of it): over 7 s (the default is 60 s).
LEASE_LOOK_MAX_S = 5.0
LEASE_KILL_AGAIN_S = 1.0  # past the grace: SIGKILL the group again until the child exits


class StartError(Exception):
    """The command cannot be started; the message says why, in full."""


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
    """SIGALRM: stop the job if the agent's lease with the daemon ran out; else sleep until
    its deadline (LEASE_LOOK_MAX_S at most)."""
    if _State.reaped or not _State.child:
        return
    now = time.time()
    if _State.lease_out:
        if now >= _State.kill_at:
            _on_signal(signal.SIGHUP, None)  # SIGKILL to the child's group
            _look_in(LEASE_KILL_AGAIN_S)  # until it has exited
        else:
            _look_in(_State.kill_at - now)
        return
    try:
        with open(_State.lease_file, "rb") as f:
            fields = f.read(64).split()
        deadline, grace = float(fields[0]), float(fields[1])
    except (OSError, ValueError, IndexError):
        _look_in(LEASE_LOOK_MAX_S)  # no lease known (yet)
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
        _look_in(grace)
        return
    left = deadline - now
    _look_in(left if left < LEASE_LOOK_MAX_S else LEASE_LOOK_MAX_S)  # NaN: the maximum


def _look_in(seconds: float) -> None:
    """SIGALRM once, this many seconds from now (a tenth of a second at least)."""
    signal.setitimer(signal.ITIMER_REAL, seconds if seconds > 0.1 else 0.1)


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


def _read_env(fd: int) -> dict[str, str]:
    os.lseek(fd, 0, os.SEEK_SET)  # the agent wrote it, and shares the offset
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    os.close(fd)
    env = {}
    for entry in data.split(b"\0")[:-1]:
        name, _, value = os.fsdecode(entry).partition("=")
        env[name] = value
    return env


def _start(command: list[str], env: dict[str, str], opts: dict[str, str]) -> int:
    """Fork and exec the command (see 2. above); its pid, or StartError. An exec that works
    closes the error pipe; one that fails writes why on it."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(err_r)
        os.close(err_w)
        raise
    if pid == 0:
        os.close(err_r)
        _child(command, env, opts, mask, err_w)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(err_w)
    why = b""
    while chunk := os.read(err_r, 4096):
        why += chunk
    os.close(err_r)
    if why:
        os.waitpid(pid, 0)
        raise StartError(why.decode(errors="replace"))
    return pid


def _child(
    command: list[str], env: dict[str, str], opts: dict[str, str], mask: set[int], err: int
) -> NoReturn:
    """The command's process until its exec; never returns."""
    try:
        os.setsid()
        for sig in DEFAULTED:
            signal.signal(sig, signal.SIG_DFL)
        if "uid" in opts:
            uid, gid = int(opts["uid"]), int(opts["gid"])
            try:
                os.setgroups([int(g) for g in opts["groups"].split(",") if g])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)  # all three: root cannot be taken back
            except OSError as e:
                raise StartError(f"cannot run as user {opts['user']}: {e.strerror}") from e
        os.umask(JOB_UMASK)
        try:
            os.chdir(opts["cwd"])
        except OSError as e:
            raise StartError(
                f"working_dir {opts['cwd']} is not usable by user {opts['user']}: {e.strerror}"
            ) from e
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a held signal is delivered here
        try:
            _exec(command, env)
        except OSError as e:  # named as given, not as the last PATH entry tried
            raise StartError(
                f"cannot start {command[0]!r}: {OSError(e.errno, e.strerror, command[0])}"
            ) from e
    except BaseException as e:
        message = str(e) if isinstance(e, StartError) else f"cannot start {command[0]!r}: {e}"
        os.write(err, message.encode(errors="replace"))
    os._exit(127)


def _exec(command: list[str], env: dict[str, str]) -> None:
    """execvpe by hand, searching the job's PATH: os.execvpe imports a module, which the job's
    user may not be able to read (a Python under /root)."""
    name = command[0]
    if "/" in name:
        os.execve(name, command, env)
    first: OSError | None = None  # the first error that is not "not there", as execvp says
    last: OSError = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    for folder in env.get("PATH", os.defpath).split(":"):
        try:
            os.execve(os.path.join(folder, name), command, env)
        except OSError as e:
            last = e
            if first is None and e.errno not in (errno.ENOENT, errno.ENOTDIR):
                first = e
    raise first or last


def main(argv: list[str]) -> int:
    opts, command = _parse(argv)
    status, ready = opts["status"], int(opts["ready-fd"])
    os.set_inheritable(ready, False)  # the job must not hold the agent's pipe open
    _State.to_group = opts.get("signal-to", "group") == "group"
    for sig in HELD:
        signal.signal(sig, _on_signal)
    try:
        if not command:
            raise StartError("empty command")
        env = _read_env(int(opts["env-fd"]))
        if opts.get("cgroup-procs"):
            fd = os.open(opts["cgroup-procs"], os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        child = _start(command, env, opts)
    except (OSError, StartError) as e:
        message = str(e) if isinstance(e, StartError) else f"cannot start {command[0]!r}: {e}"
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
        _look_in(1.0)  # then as _check_lease says; waitid is resumed (PEP 475)

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
