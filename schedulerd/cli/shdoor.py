"""The broker's door for scripts/schedctl, the bash `schedctl` (docs/cli-broker.md):
`schedctl submit` answered without starting Python.

bash reaches no Unix socket, but opens loopback TCP (/dev/tcp). So the broker also
listens on 127.0.0.1 (a port of the kernel's choosing) and publishes "PORT SECRET" in
a file of its user's 0700 directory, under the name the script gives it
(SCHEDULERD_SH_NAME: its own path and PYTHONPATH; host first). On every connection:

1. the kernel says which uid holds the other end (sock_diag, schedulerd/auth/peer.py,
   as the daemon knows local users): another user's connection is closed unanswered;
2. the broker sends the secret (NUL-ended): a process of another user that took the
   port after this broker ended cannot, so the script sends nothing to it;
3. the script sends NUL-ended fields: cwd, argc, argv..., envc, NAME=VALUE...
   (SCHEDULERD_* and COLUMNS), at most fast.MAX_REQUEST bytes within 10 s;
4. the broker answers one NUL-ended shell text that the script evals: `printf %s
   '...'` for stdout, the same `>&2` for stderr, `exit N`, every word single-quoted;
   or "F": not served here, the script runs schedctl-py instead.

Only `submit` is served here (a shell loop's command; `jobs` and the rest go through
schedctl-py, whose broker answers them): bash reads an answer a byte at a time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable

from schedulerd.auth.peer import loopback_peer_uid
from schedulerd.cli import fast
from schedulerd.cli.main import Invocation

NAME_MAX = 200
READ_TIMEOUT_S = 10.0

# (argv, where it was given) -> (exit code, stdout, stderr), or None: not served here.
Run = Callable[[list[str], Invocation], "tuple[int, str, str] | None"]


class ShellDoor:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.secret = secrets.token_hex(16)
        self.published: set[str] = set()

    def publish(self, name: str) -> None:
        """Write "PORT SECRET" under `name` in the broker's directory (a file name made
        by scripts/schedctl; anything else is ignored), mode 0600, replaced whole."""
        if name in self.published or not valid_name(name):
            return
        final = os.path.join(self.directory, name)
        tmp = f"{final}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{self.port} {self.secret}\n")
            os.replace(tmp, final)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        self.published.add(name)

    def close(self) -> None:
        """Unpublish (only what still names this broker: a newer one may have
        replaced it) and stop listening."""
        for name in self.published:
            path = os.path.join(self.directory, name)
            with contextlib.suppress(OSError), open(path) as f:
                if f.read().split() == [str(self.port), self.secret]:
                    os.unlink(path)
        self.listener.close()

    def ours(self, peer: tuple[str, int]) -> bool:
        """Whether this user holds the other end (the kernel says: sock_diag, ~20 µs)."""
        return loopback_peer_uid(f"ipv4:{peer[0]}:{peer[1]}", [self.port]) == os.getuid()

    def serve(self, conn: socket.socket, peer: tuple[str, int], run: Run) -> None:
        with conn:
            if not self.ours(peer):  # never another user's command
                return
            conn.settimeout(READ_TIMEOUT_S)
            conn.sendall(self.secret.encode() + b"\0")
            req = read_request(conn)
            if req is None:
                return
            done = None  # (TOO_LARGE: schedctl-py runs it)
            if not isinstance(req, str) and req[0][:1] == ["submit"]:
                done = run(*req)
            conn.settimeout(None)
            conn.sendall(answer(done).encode("utf-8", "surrogateescape") + b"\0")


def valid_name(name: str) -> bool:
    return (
        0 < len(name) <= NAME_MAX
        and name.endswith(".tcp")
        and "/" not in name
        and "\0" not in name
        and not name.startswith(".")
    )


TOO_LARGE = "too large"


def read_request(conn: socket.socket) -> tuple[list[str], Invocation] | str | None:
    """The script's fields (see the module's doc). TOO_LARGE: a whole request larger
    than fast.MAX_REQUEST, read to its end but not kept, so that the script, answered
    "F", has schedctl-py run it in process, as schedctl-py does with one (a request
    cut short, unanswered, would leave the script saying that it may have been done).
    None: not a whole request."""
    buf = b""
    kept: list[bytes] = []  # the fields, while they fit in MAX_REQUEST
    seen = size = 0  # fields, and their bytes
    over = False
    argc: int | None = None
    want: int | None = None  # fields in all, once argc and envc are known
    deadline = time.monotonic() + READ_TIMEOUT_S  # all of it: not READ_TIMEOUT_S a byte

    def counts(i: int) -> bool:  # field i is argc or envc
        return i == 1 or (argc is not None and i == 2 + argc)

    while want is None or seen < want:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        conn.settimeout(left)
        chunk = conn.recv(1 << 16)
        if not chunk:
            return None
        *whole, buf = (buf + chunk).split(b"\0")
        for field in whole:
            if counts(seen):
                if not (field.isdigit() and len(field) <= 6):
                    return None
                if seen == 1:
                    argc = int(field)
                else:
                    want = seen + 1 + int(field)
            seen += 1
            size += len(field) + 1
            over = over or size > fast.MAX_REQUEST
            if not over:
                kept.append(field)
        if size + len(buf) > fast.MAX_REQUEST:
            over = True
            if counts(seen) and len(buf) > 6:
                return None
            if not counts(seen):
                buf = b""  # (a field not kept: only its end, a NUL, still counts)
    if over:
        return TOO_LARGE
    text = [os.fsdecode(f) for f in kept]
    argv = text[2 : 2 + (argc or 0)]
    env = dict(kv.partition("=")[::2] for kv in text[3 + (argc or 0) : want])
    env = {k: v for k, v in env.items() if k.startswith("SCHEDULERD_") or k == "COLUMNS"}
    return argv, Invocation(env, text[0], None)


def answer(done: tuple[int, str, str] | None) -> str:
    """Shell text for the script to eval: the words single-quoted (nothing in them is
    expanded), NUL (which no shell word holds) shown as \\0."""
    if done is None:
        return "F"
    code, out, err = done
    parts = []
    if out:
        parts.append(f"printf %s {quote(out)}")
    if err:
        parts.append(f"printf %s {quote(err)} >&2")
    parts.append(f"exit {int(code) & 0xFF}")
    return "; ".join(parts)


def quote(text: str) -> str:
    return "'" + text.replace("\0", "\\0").replace("'", "'\\''") + "'"
