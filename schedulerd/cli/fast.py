"""`schedctl`'s entry point: hand the command to this user's broker when one is up,
else run the CLI here (docs/cli-broker.md).

A `schedctl submit` run whole in a fresh Python spends ~200 ms importing grpc,
protobuf and the CLI before its one call takes ~3 ms; a shell loop of submissions is
then 20 times slower than Slurm's sbatch. So this module imports nothing but the
interpreter's built-in modules (os, sys and _socket, no `socket`: it imports enum):
it sends argv, the working directory and the SCHEDULERD_* environment over a Unix
socket to a broker (schedulerd/cli/broker.py) that keeps the CLI imported and the
connection to the daemon open, writes back what the broker prints, and exits with its
code. When there is no broker, it starts one for the next command and runs this one
itself; the broker exits after a minute without work.

Trust: the socket lives in a directory of this user's, mode 0700 (checked before
connecting), and the peer must run as this user (SO_PEERCRED, checked both ways).
"""

from __future__ import annotations

import _socket
import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing is 9 ms of a 10 ms start
if TYPE_CHECKING:
    from typing import NoReturn

PROTOCOL = b"SCHEDCTL1\n"
MAX_REQUEST = 1 << 20  # bytes of one request (argv and environment)
OFF = ("off", "0", "no", "false")


def main() -> None:
    argv = sys.argv[1:]
    path = broker_path()
    if path is None or not wanted(argv):
        _in_process(argv)
    message = request(argv)
    if message is None:  # too large for a broker: here, then
        _in_process(argv)
    sock = _connect(path)
    if sock is None:
        start_broker(path)
        _in_process(argv)
    try:
        sock.sendall(message)
    except OSError:  # not all of it sent: no broker runs a part of a request
        sock.close()  # (a full one answers "f" and closes unread: here, then)
        _in_process(argv)
    try:
        code = _relay(sock)
    except OSError:
        code = None
    except KeyboardInterrupt:  # Ctrl-C: as the CLI in process ends (a begun command
        os._exit(130)  # is the broker's to finish: docs/cli-broker.md), no traceback
    if code is None:  # sent, and no answer: it may have been done; never do it twice
        os.write(
            2,
            b"schedctl: the broker ended before answering (the command may or may "
            b"not have been done); SCHEDULERD_BROKER=off goes without it\n",
        )
        code = 1
    if code < 0:  # the broker does not serve this command: here, then
        sock.close()
        _in_process(argv)
    os._exit(code)  # nothing is buffered: every byte went out with os.write


def wanted(argv: list[str]) -> bool:
    """The broker may answer: not turned off by the environment or the command line."""
    if os.environ.get("SCHEDULERD_BROKER", "").lower() in OFF:
        return False
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "--no-broker" not in head


PROXIES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY")
# Read by the process, not per command: `show` prints times in the local zone (TZ).
PROCESS_WIDE = (*PROXIES, "TZ")


def _process_settings() -> str:
    """What gRPC reads from the process environment rather than from a channel's
    options (GRPC_*, proxies): a broker serves only callers whose settings are its own
    (they are part of its socket's name; scripts/schedctl names the same, but for TZ:
    the bash door serves `submit` only, which prints no time)."""
    found = []
    for name, value in os.environ.items():
        if name.startswith(("GRPC_", "grpc_")) or name in PROCESS_WIDE:
            found.append(f"{name}={value}")
    return "\0".join(sorted(found))


def broker_dir() -> str:
    if os.environ.get("SCHEDULERD_BROKER_DIR"):
        return os.environ["SCHEDULERD_BROKER_DIR"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "schedulerd")
    return f"/tmp/schedulerd-{os.getuid()}"


def broker_path() -> str | None:
    """This user's broker socket for this installation of schedulerd (its package
    directory and interpreter: two checkouts never share a broker), on this host (a
    home directory may be shared by several) and in this network namespace. None: the
    name would be too long."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    key = f"{PROTOCOL!r}\0{sys.executable}\0{here}\0{_process_settings()}\0{_net()}".encode()
    digest = 0xCBF29CE484222325  # FNV-1a, 64 bits: a name, not a secret
    for byte in key:
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    host = os.uname().nodename[:32].replace("/", "_")
    path = os.path.join(broker_dir(), f"{host}-{digest:016x}.sock")
    return path if len(path.encode()) < 100 else None  # sun_path holds 108 bytes


def _net() -> int:
    """This process's network namespace: a broker in another one (`ip netns exec`, a
    container sharing /tmp) reaches other addresses under the same names, so it is
    another broker. 0 where /proc does not say."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def private_dir(path: str) -> bool:
    """A directory (not a link) that this user owns and no one else may enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        (st.st_mode & 0o170000) == 0o040000
        and st.st_uid == os.getuid()
        and (st.st_mode & 0o077) == 0
    )


def peer_uid(sock: _socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (struct ucred)."""
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(cred[4:8], sys.byteorder)


def _connect(path: str) -> _socket.socket | None:
    if not private_dir(os.path.dirname(path)):
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        if peer_uid(sock) != os.getuid():
            raise OSError("another user's broker")
    except OSError:
        sock.close()
        return None
    return sock


def request(argv: list[str]) -> bytes | None:
    """PROTOCOL, then a length and NUL-terminated fields: cwd, the terminal's columns
    ("" when stdout is not a terminal), argc, argv, then NAME=VALUE for SCHEDULERD_* and
    COLUMNS. None: more than MAX_REQUEST bytes."""
    columns = ""
    if os.isatty(1):
        try:
            columns = str(os.get_terminal_size(1).columns)
        except OSError:
            columns = ""
    env = [
        f"{k}={v}" for k, v in os.environ.items() if k.startswith("SCHEDULERD_") or k == "COLUMNS"
    ]
    fields = [here(), columns, str(len(argv)), *argv, *env]
    body = b"".join(os.fsencode(f) + b"\0" for f in fields)
    if len(body) > MAX_REQUEST:
        return None
    return PROTOCOL + len(body).to_bytes(4, "big") + body


def here() -> str:
    """The working directory; "" when it is gone (removed under the shell): the CLI
    then says so for a submission, and the rest needs none."""
    try:
        return os.getcwd()
    except OSError:
        return ""


def _relay(sock: _socket.socket) -> int | None:
    """Write the broker's frames out (kind, length, data: o stdout, e stderr); its
    exit code (x), -1 when it says to run here (f), None when it ends before that."""
    buf = b""
    while True:
        while len(buf) >= 5:
            size = int.from_bytes(buf[1:5], "big")
            if len(buf) < 5 + size:
                break
            kind, data, buf = buf[:1], buf[5 : 5 + size], buf[5 + size :]
            if kind == b"o":
                _write(1, data)
            elif kind == b"e":
                _write(2, data)
            elif kind == b"x":
                return int(data)
            elif kind == b"f":
                return -1
        chunk = sock.recv(1 << 16)
        if not chunk:
            return None
        buf += chunk


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:  # `schedctl jobs | head`: as the in-process CLI does
            os._exit(0)
        view = view[n:]


def start_broker(path: str | None) -> None:
    """Start this user's broker for the next command, detached (its own session, no
    terminal, nothing inherited but what it needs). Best effort: this command does
    not wait for it."""
    if path is None or os.environ.get("SCHEDULERD_BROKER", "").lower() in OFF:
        return
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    if env.get("PYTHONPATH"):  # the broker runs in /: it must import the code we run
        env["PYTHONPATH"] = absolute_path_list(env["PYTHONPATH"])
    for keep in ("SCHEDULERD_BROKER_IDLE_S", "SCHEDULERD_BROKER_DIR", "SCHEDULERD_SH_NAME"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    try:
        subprocess.Popen(
            [sys.executable, "-m", "schedulerd.cli.broker", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            cwd="/",
            env=env,
        )
    except OSError:
        return


def absolute_path_list(value: str) -> str:
    """PYTHONPATH with its relative entries (an empty one is the working directory)
    made absolute from here."""
    cwd = here() or "/"
    return os.pathsep.join(os.path.join(cwd, p) for p in value.split(os.pathsep))


def _in_process(argv: list[str]) -> NoReturn:
    from schedulerd.cli.main import main as full

    full(argv)
    raise SystemExit(0)


if __name__ == "__main__":
    main()
