"""The CLI's broker (docs/cli-broker.md): one process per user, host and installation
that keeps `schedctl` imported and its connections to daemons open, and answers the
quick commands (submit, jobs, show, cancel, ...) that `schedctl` (schedulerd/cli/fast.py)
hands it over a Unix socket.

It never widens who acts as whom: it serves only its own user (SO_PEERCRED on every
connection; the socket in a 0700 directory of that user's), and each command uses the
credentials the caller's own options and environment name, read again for every
command (a token file that changes is read anew); connections are kept per distinct
(daemon, token, CA, vouch socket). Bounded: requests of at most 1 MiB, read within 10 s,
at most MAX_ACTIVE commands at once (past that the caller runs its command itself),
MAX_CHANNELS open connections. It exits after SCHEDULERD_BROKER_IDLE_S (default 60)
seconds without a command, or when its code changes on disk.

    python -m schedulerd.cli.broker SOCKET_PATH
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import os
import select
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from typing import TextIO

from schedulerd.cli import fast
from schedulerd.cli.main import Connection, Invocation, build_parser, invoke
from schedulerd.cli.shdoor import ShellDoor
from schedulerd.client import Client

MAX_ACTIVE = 32
MAX_CHANNELS = 8
READ_TIMEOUT_S = 10.0
# At its end the broker waits this long for the commands it began (the longest a
# served command takes: a call with the CLI's own deadline, and some).
FINISH_S = 90.0
FRAME = 1 << 20  # bytes of output per frame
# Commands that end after a few unary calls; the others (logs, watches, --wait, file
# readers) are run by the caller itself.
SERVED = {"submit", "jobs", "show", "cancel", "whoami", "consumers", "nodes"}


class _Output(io.TextIOBase):
    """sys.stdout and sys.stderr while serving: each thread's command writes into its
    own buffer (commands print; several run at once)."""

    def __init__(self, local: threading.local, name: str, real: TextIO) -> None:
        self._local = local
        self._name = name
        self._real = real

    def write(self, text: str) -> int:
        buf = getattr(self._local, self._name, None)
        if buf is None:
            return self._real.write(text)
        buf.append(text)
        return len(text)

    def isatty(self) -> bool:
        return bool(getattr(self._local, "tty", False))

    def flush(self) -> None:
        return None


class Broker:
    def __init__(self, path: str, idle_s: float, door: ShellDoor | None = None) -> None:
        self.path = path
        self.idle_s = idle_s
        self.door = door  # scripts/schedctl's way in (schedulerd/cli/shdoor.py)
        self._local = threading.local()
        self._parser = build_parser()
        self._parse_lock = threading.Lock()
        self._clients: OrderedDict[tuple[object, ...], Client] = OrderedDict()
        # Commands using each open client: one is closed only once none uses it (an
        # evicted client closed under a submission would cancel the call, and the
        # caller, told it failed, would submit again what the daemon may have queued).
        self._users: dict[int, int] = {}
        self._retired: dict[int, Client] = {}
        self._clients_lock = threading.Lock()
        self._active = 0
        self._active_lock = threading.Lock()
        self._last = time.monotonic()
        self._code = _CodeStamp()
        self._stale = False

    # -- serving --------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        sys.stdout = _Output(self._local, "out", sys.stdout)
        sys.stderr = _Output(self._local, "err", sys.stderr)
        listeners = [listener] if self.door is None else [listener, self.door.listener]
        while not self._stale:
            ready, _, _ = select.select(listeners, [], [], 1.0)
            for sock in ready:
                try:
                    conn, peer = sock.accept()
                except OSError:
                    continue
                if self.door is not None and sock is not listener and not self.door.ours(peer):
                    conn.close()  # another user's: no thread, and no work that keeps us up
                    continue
                with self._active_lock:  # (a connection is no work: see run_captured)
                    full = self._active >= MAX_ACTIVE
                    if not full:
                        self._active += 1
                if full:  # the caller runs it itself rather than wait here
                    with conn:
                        if sock is listener:  # (the script, answered nothing, does too)
                            _reply(conn, [(b"f", b"")])
                    continue
                target = self._serve_one if sock is listener else self._serve_door
                threading.Thread(target=target, args=(conn, peer), daemon=True).start()
            # Checked whatever knocked, not only after a second of quiet: another user
            # knocking at the door must not keep the broker up. (This user's accepted
            # connections are active by now: none is left unanswered.)
            with self._active_lock:
                idle = not self._active and time.monotonic() - self._last > self.idle_s
            if idle:
                return

    def turn_away(self, listener: socket.socket) -> None:
        """At the end, its name already gone: every caller still queued on the socket
        is told to run the command itself (never left to read an end of file, which it
        must take for "may or may not have been done"), and the commands begun are
        finished before the process ends (its threads die with it)."""
        listener.setblocking(False)
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # none left: nothing can queue any more, the name is gone
                break
            with conn:
                conn.setblocking(True)
                with contextlib.suppress(OSError):
                    _reply(conn, [(b"f", b"")])
        deadline = time.monotonic() + FINISH_S
        while time.monotonic() < deadline:
            with self._active_lock:
                if not self._active:
                    return
            time.sleep(0.02)

    def _serve_door(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        assert self.door is not None
        try:
            self.door.serve(conn, peer, self.run_captured)
        except OSError:
            return
        finally:
            self._done()

    def _done(self) -> None:
        with self._active_lock:
            self._active -= 1

    def _serve_one(self, conn: socket.socket, _peer: object = None) -> None:
        try:
            with conn:
                if fast.peer_uid(conn) != os.getuid():  # never another user's command
                    return
                conn.settimeout(READ_TIMEOUT_S)
                req = _read_request(conn)
                if req is None:
                    return
                name = req[1].env.get("SCHEDULERD_SH_NAME")
                if name and self.door is not None:  # scripts/schedctl asks for its door
                    self.door.publish(name)
                frames = self._answer(*req)
                conn.settimeout(None)
                _reply(conn, frames)
        except OSError:
            return
        finally:
            self._done()

    def _answer(self, argv: list[str], inv: Invocation) -> list[tuple[bytes, bytes]]:
        done = self.run_captured(argv, inv)
        if done is None:
            return [(b"f", b"")]
        code, out, err = done
        frames = _frames(b"o", out) + _frames(b"e", err)
        return [*frames, (b"x", str(code).encode())]

    def run_captured(self, argv: list[str], inv: Invocation) -> tuple[int, str, str] | None:
        """Run a command as the CLI would: (its exit code, what it printed on stdout,
        on stderr); None: not served here (the caller runs it itself)."""
        # Only a command of this user keeps the broker from its idle end: another
        # user's connections to the door (closed unanswered) must not keep it up.
        with self._active_lock:
            self._last = time.monotonic()
        if self._code.changed():  # upgraded under us: old code answers nothing
            self._stale = True
            return None
        out: list[str] = []
        err: list[str] = []
        self._local.out, self._local.err = out, err
        self._local.tty = inv.columns is not None
        try:
            code = self._run(argv, inv)
        finally:
            self._local.out = self._local.err = None
            self.release()
            with self._active_lock:
                self._last = time.monotonic()
        return None if code is None else (code, "".join(out), "".join(err))

    def _run(self, argv: list[str], inv: Invocation) -> int | None:
        """The command's exit code, having printed what it prints; None: not served
        here (the caller runs it itself)."""
        try:
            with self._parse_lock:
                args = self._parser.parse_args(argv)
        except SystemExit as e:  # usage errors and --help: argparse has printed them
            return _exit_code(e)
        if args.cmd not in SERVED or args.no_broker or getattr(args, "wait", False):
            return None
        try:
            return invoke(args, inv, self._client)
        except SystemExit as e:
            return _exit_code(e)
        except Exception:
            traceback.print_exc()
            return 1

    def _client(self, connection: Connection) -> Client:
        """The open client for `connection`, held by this thread's command until
        `release` (the command's end)."""
        key = connection.key
        with self._clients_lock:
            client = self._clients.get(key)
            if client is not None:
                self._clients.move_to_end(key)
            else:
                client = connection.client()
                self._clients[key] = client
                while len(self._clients) > MAX_CHANNELS:
                    old = self._clients.popitem(last=False)[1]
                    if self._users.get(id(old)):
                        self._retired[id(old)] = old  # closed by its last user
                    else:
                        old.close()
            self._users[id(client)] = self._users.get(id(client), 0) + 1
            held: list[Client] = getattr(self._local, "held", None) or []
            held.append(client)
            self._local.held = held
            return client

    def release(self) -> None:
        """This thread's command is done with its clients: close those evicted since."""
        held: list[Client] = getattr(self._local, "held", None) or []
        self._local.held = []
        with self._clients_lock:
            for client in held:
                left = self._users[id(client)] - 1
                if left:
                    self._users[id(client)] = left
                    continue
                del self._users[id(client)]
                retired = self._retired.pop(id(client), None)
                if retired is not None:
                    retired.close()


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def _frames(kind: bytes, text: str) -> list[tuple[bytes, bytes]]:
    data = text.encode("utf-8", "surrogateescape")
    return [(kind, data[i : i + FRAME]) for i in range(0, len(data), FRAME)]


def _reply(conn: socket.socket, frames: list[tuple[bytes, bytes]]) -> None:
    try:
        for kind, data in frames:
            conn.sendall(kind + len(data).to_bytes(4, "big") + data)
    except OSError:
        return


def _read_exactly(conn: socket.socket, n: int, deadline: float) -> bytes | None:
    """`n` bytes, all of them before `deadline` (time.monotonic): a peer that sends
    a byte now and then holds no thread past it (a timeout per recv would wait anew
    for each byte)."""
    chunks: list[bytes] = []
    while n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not sent in time")
        conn.settimeout(left)
        chunk = conn.recv(min(n, 1 << 16))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_request(conn: socket.socket) -> tuple[list[str], Invocation] | None:
    """argv and where it was given (fast.request's format); None: not a request."""
    deadline = time.monotonic() + READ_TIMEOUT_S
    head = _read_exactly(conn, len(fast.PROTOCOL) + 4, deadline)
    if head is None or not head.startswith(fast.PROTOCOL):
        return None
    size = int.from_bytes(head[len(fast.PROTOCOL) :], "big")
    if size > fast.MAX_REQUEST:
        return None
    body = _read_exactly(conn, size, deadline)
    if body is None or not body.endswith(b"\0"):
        return None
    fields = [os.fsdecode(f) for f in body[:-1].split(b"\0")]
    if len(fields) < 3 or not fields[2].isdigit():
        return None
    cwd, columns, argc = fields[0], fields[1], int(fields[2])
    argv, rest = fields[3 : 3 + argc], fields[3 + argc :]
    if len(argv) != argc:
        return None
    env = dict(kv.partition("=")[::2] for kv in rest)
    env = {k: v for k, v in env.items() if k.startswith("SCHEDULERD_") or k == "COLUMNS"}
    cols = int(columns) if columns.isdigit() else None
    return argv, Invocation(env, cwd, cols)


class _CodeStamp:
    """When the code this broker runs changed on disk (an upgrade, a checkout): every
    schedulerd module it has imported (format, arrays, the API's messages: not only the
    CLI's own files), each as it was first seen (one imported later, on first use, from
    then on). Its file's ctime: a file replaced or rewritten gets a new one, whatever
    mtime an installer gives it."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int]] = {}
        self.changed()

    def changed(self) -> bool:
        for name, module in list(sys.modules.items()):
            if name != "schedulerd" and not name.startswith("schedulerd."):
                continue
            path = getattr(module, "__file__", None)
            if not path:
                continue
            try:
                st = os.stat(path)
                stamp = (st.st_ino, st.st_ctime_ns)
            except OSError:
                stamp = (0, 0)
            if self._seen.setdefault(path, stamp) != stamp:
                return True
        return False


def listen(path: str) -> tuple[socket.socket, int] | None:
    """The broker's socket, bound; with the lock that makes it the only one (its file
    descriptor, held while it runs). None: another broker has it, or the directory
    is not this user's alone."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return None
    if not fast.private_dir(directory):
        return None
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        return None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a broker that died left it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(64)
    return sock, lock


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m schedulerd.cli.broker")
    p.add_argument("path", help="the socket to listen on (schedulerd/cli/fast.py names it)")
    args = p.parse_args(argv)
    if args.path != fast.broker_path():
        # Started for other code than this (a relative PYTHONPATH taken from another
        # directory, say): it would answer in that code's stead. None, then.
        return
    idle_s = float(os.environ.get("SCHEDULERD_BROKER_IDLE_S", "60") or 60)
    bound = listen(args.path)
    if bound is None:
        return
    sock, lock = bound
    door: ShellDoor | None = None
    try:
        door = ShellDoor(os.path.dirname(args.path))
    except OSError:  # no loopback to listen on: scripts/schedctl uses schedctl-py
        door = None
    if door is not None and os.environ.get("SCHEDULERD_SH_NAME"):
        door.publish(os.environ["SCHEDULERD_SH_NAME"])
    broker = Broker(args.path, idle_s, door)
    try:
        broker.serve(sock)
    finally:
        # The names go first, so that no caller finds this broker any more (a caller
        # that does not runs the command itself), then the callers already queued are
        # answered and the commands begun finished. Unlinked before the lock is let go:
        # a new broker binds only once this one is gone.
        if door is not None:
            door.close()  # (a door caller sends nothing before the hello: it goes on)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.path)
        broker.turn_away(sock)
        sock.close()
        os.close(lock)


if __name__ == "__main__":
    main()
