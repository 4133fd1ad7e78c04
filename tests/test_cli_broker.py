"""Issue 15 item 5: `schedctl` hands quick commands to a per-user broker
(docs/cli-broker.md), against a real daemon, with `schedctl` run as a process as a user
runs it (schedulerd.cli.fast is the installed entry point). Every broker a test starts
is ended by the test."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Cluster, running_cluster, wait_for

from schedulerd.cli import fast

REPO = Path(__file__).resolve().parent.parent
POLICY = """
version: 1
consumers:
  lab: {}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("broker"), POLICY, {}) as c:
        yield c


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    # Under /tmp itself (not pytest's 0700 tree): one test lets another user reach it.
    d = Path(tempfile.mkdtemp(prefix="schedctl-broker-"))
    try:
        yield d
    finally:
        for pid in _brokers(d):  # no stray process past its test
            os.kill(pid, signal.SIGTERM)
            wait_for("the broker to end", lambda pid=pid: not _alive(pid), timeout_s=10)
        shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is ended: its parent (this test's schedctl) is gone; init reaps it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _brokers(d: Path) -> list[int]:
    pids = []
    for path in d.glob("*.sock"):
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
            except OSError:
                continue
            cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            pids.append(int.from_bytes(cred[:4], sys.byteorder))
    return pids


def schedctl(
    cluster: Cluster,
    broker_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    importtime: bool = False,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    base.pop("COLUMNS", None)
    base.update(
        SCHEDULERD_ADDRESS=cluster.address,
        SCHEDULERD_CONSUMER="/lab",
        SCHEDULERD_BROKER_DIR=str(broker_dir),
        SCHEDULERD_BROKER_IDLE_S="30",
    )
    base.update(env or {})
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "schedulerd.cli.fast", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=base,
        cwd=cwd,
    )


def _via_broker(done: subprocess.CompletedProcess[str]) -> bool:
    """Whether this schedctl left the command to a broker: it never imported grpc."""
    imported = re.findall(r"^import time:.*\|\s*(\S+)$", done.stderr, re.M)
    assert imported, done.stderr
    return "grpc" not in imported


def _job_id(out: str) -> int:
    m = re.search(r"submitted job (\d+) to /lab", out)
    assert m, out
    return int(m.group(1))


def _started(broker_dir: Path) -> int:
    return wait_for("a broker", lambda: (_brokers(broker_dir) or [0])[0], timeout_s=20)


def test_the_first_command_starts_a_broker_that_answers_the_next(
    cluster: Cluster, broker_dir: Path
) -> None:
    first = schedctl(cluster, broker_dir, "submit", "--", "sleep", "1", importtime=True)
    assert first.returncode == 0 and not _via_broker(first), first.stderr
    _started(broker_dir)
    second = schedctl(cluster, broker_dir, "submit", "--", "sleep", "1", importtime=True)
    assert second.returncode == 0 and _via_broker(second), second.stderr
    ids = [_job_id(d.stdout) for d in (first, second)]
    assert ids[1] > ids[0]
    # The same words, and the same exit codes, as without a broker.
    for args in (
        ["show", str(ids[1])],
        ["jobs", "--json"],
        ["show", "999999"],
        ["cancel", "x"],
        ["nope"],
    ):
        served = schedctl(cluster, broker_dir, *args)
        alone = schedctl(cluster, broker_dir, *args, env={"SCHEDULERD_BROKER": "off"})
        assert (served.returncode, served.stdout, served.stderr) == (
            alone.returncode,
            alone.stdout,
            alone.stderr,
        ), args


def test_each_command_uses_its_callers_credentials(cluster: Cluster, broker_dir: Path) -> None:
    assert schedctl(cluster, broker_dir, "whoami").returncode == 0
    _started(broker_dir)
    bad = schedctl(cluster, broker_dir, "whoami", env={"SCHEDULERD_TOKEN": "not-a-token"})
    assert bad.returncode != 0 and "token" in bad.stderr.lower(), bad.stderr
    # A token file is read by each command (a relative path from the caller's working
    # directory): readable by others, refused; changed, read anew.
    here = broker_dir / "work"
    here.mkdir()
    token_file = here / "token"
    token_file.write_text("not-a-token\n")
    token_file.chmod(0o644)
    loose = schedctl(cluster, broker_dir, "whoami", "--token-file", "token", cwd=here)
    assert loose.returncode == 2 and "readable by others" in loose.stderr, loose.stderr
    token_file.chmod(0o600)
    bad = schedctl(cluster, broker_dir, "whoami", "--token-file", "token", cwd=here)
    assert bad.returncode == 1 and "token" in bad.stderr.lower(), bad.stderr
    good = schedctl(cluster, broker_dir, "whoami", importtime=True)
    assert good.returncode == 0 and _via_broker(good) and "local-uid" in good.stdout


def test_streams_and_waits_are_run_by_schedctl_itself(cluster: Cluster, broker_dir: Path) -> None:
    job = schedctl(cluster, broker_dir, "submit", "--", "true")
    _started(broker_dir)
    job_id = str(_job_id(job.stdout))
    logs = schedctl(cluster, broker_dir, "logs", job_id, "--no-follow", importtime=True)
    assert not _via_broker(logs)  # the broker said: run it here


def test_off_by_the_environment_or_the_flag(cluster: Cluster, broker_dir: Path) -> None:
    off = schedctl(cluster, broker_dir, "whoami", env={"SCHEDULERD_BROKER": "off"})
    flag = schedctl(cluster, broker_dir, "whoami", "--no-broker")
    assert off.returncode == flag.returncode == 0
    time.sleep(1)
    assert list(broker_dir.iterdir()) == []  # none started


def test_it_exits_when_idle(cluster: Cluster, broker_dir: Path) -> None:
    schedctl(cluster, broker_dir, "whoami", env={"SCHEDULERD_BROKER_IDLE_S": "1"})
    pid = _started(broker_dir)
    wait_for("the idle broker to exit", lambda: not _alive(pid), timeout_s=20)
    assert not list(broker_dir.glob("*.sock"))


def test_it_refuses_garbage_and_oversized_requests(cluster: Cluster, broker_dir: Path) -> None:
    schedctl(cluster, broker_dir, "whoami")
    _started(broker_dir)
    path = str(next(broker_dir.glob("*.sock")))
    big = fast.PROTOCOL + (fast.MAX_REQUEST + 1).to_bytes(4, "big")
    for message in (b"GET / HTTP/1.1\r\n\r\n", big):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.settimeout(15)
            try:
                s.sendall(message)
                answer = s.recv(100)
            except ConnectionResetError:  # closed with the request unread
                answer = b""
            assert answer == b""  # closed, no answer
    # A request too large for it (its SCHEDULERD_* environment here) is run by schedctl
    # itself.
    pad = {f"SCHEDULERD_PAD_{i}": "x" * 120_000 for i in range(10)}
    huge = schedctl(cluster, broker_dir, "whoami", env=pad, importtime=True)
    assert huge.returncode == 0 and not _via_broker(huge)
    # It still serves.
    assert schedctl(cluster, broker_dir, "whoami").returncode == 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_it_answers_no_other_user(cluster: Cluster, broker_dir: Path) -> None:
    schedctl(cluster, broker_dir, "whoami")
    _started(broker_dir)
    path = next(broker_dir.glob("*.sock"))
    broker_dir.chmod(0o711)  # let another user reach the socket: the broker still refuses
    path.chmod(0o666)
    probe = (
        "import os, socket, sys; os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(15)\n"
        "try:\n    s.sendall(sys.stdin.buffer.read()); print(len(s.recv(100)))\n"
        "except (ConnectionResetError, BrokenPipeError):\n    print(0)\n"
    )
    request = fast.request(["whoami"])
    assert request is not None
    done = subprocess.run(
        [sys.executable, "-c", probe, str(path)], input=request, capture_output=True, timeout=30
    )
    assert done.stdout.strip() == b"0", done.stderr  # closed without a word
    # And schedctl itself uses no broker in a directory others may enter.
    assert not fast.private_dir(str(broker_dir))


# --- scripts/schedctl: a submission without starting Python ------------------------------


@pytest.fixture
def installed(broker_dir: Path) -> Path:
    """scripts/schedctl and schedctl-py side by side, as pip installs them; schedctl-py
    notes each time it runs (in ran.log) before running the Python CLI."""
    bin_dir = broker_dir / "bin"
    bin_dir.mkdir()
    shutil.copy(REPO / "scripts" / "schedctl", bin_dir / "schedctl")
    py = bin_dir / "schedctl-py"
    py.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"open({str(broker_dir / 'ran.log')!r}, 'a').write('ran\\n')\n"
        "from schedulerd.cli.fast import main\nmain()\n"
    )
    py.chmod(0o755)
    return bin_dir


def _ran(broker_dir: Path) -> int:
    log = broker_dir / "ran.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _sh(cluster: Cluster, broker_dir: Path, installed: Path, *args: str, **kw: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    env.update(
        SCHEDULERD_ADDRESS=cluster.address,
        SCHEDULERD_CONSUMER="/lab",
        SCHEDULERD_BROKER_DIR=str(broker_dir),
        SCHEDULERD_BROKER_IDLE_S="30",
        **kw,
    )
    return subprocess.run(
        [str(installed / "schedctl"), *args], capture_output=True, text=True, env=env, timeout=60
    )


def _door(broker_dir: Path) -> Path:
    return wait_for("the broker's door", lambda: next(broker_dir.glob("*.tcp"), None))


def test_the_bash_schedctl_submits_without_starting_python(
    cluster: Cluster, broker_dir: Path, installed: Path
) -> None:
    first = _sh(cluster, broker_dir, installed, "submit", "--", "sleep", "1")
    assert first.returncode == 0 and _ran(broker_dir) == 1, first.stderr
    _door(broker_dir)
    second = _sh(cluster, broker_dir, installed, "submit", "--", "sleep", "1")
    assert second.returncode == 0 and _ran(broker_dir) == 1, second.stderr  # no Python
    assert _job_id(second.stdout) > _job_id(first.stdout)
    # Refusals in the same words and exit codes as the Python CLI, quotes and all.
    for args in (
        ["submit", "--consumer", "/it's $(nope)", "--", "true"],
        ["submit", "--gpus", "x", "--", "true"],
        ["submit", "--bogus"],
    ):
        served = _sh(cluster, broker_dir, installed, *args)
        alone = schedctl(cluster, broker_dir, *args, env={"SCHEDULERD_BROKER": "off"})
        assert (served.returncode, served.stdout, served.stderr) == (
            alone.returncode,
            alone.stdout,
            alone.stderr,
        ), args
    assert _ran(broker_dir) == 1
    # Everything else is schedctl-py's; and so is a submission with the broker off.
    assert _sh(cluster, broker_dir, installed, "whoami").returncode == 0
    assert _ran(broker_dir) == 2
    off = _sh(cluster, broker_dir, installed, "submit", "--", "true", SCHEDULERD_BROKER="off")
    assert off.returncode == 0 and _ran(broker_dir) == 3


def test_the_bash_schedctl_trusts_only_its_brokers_secret(
    cluster: Cluster, broker_dir: Path, installed: Path
) -> None:
    _sh(cluster, broker_dir, installed, "whoami")
    door = _door(broker_dir)
    port, secret = door.read_text().split()
    # Another secret in the file (as if another process held the port): the script sends
    # nothing there and schedctl-py does the work.
    door.write_text(f"{port} {'0' * 32}\n")
    done = _sh(cluster, broker_dir, installed, "submit", "--", "true")
    assert done.returncode == 0 and "submitted job" in done.stdout
    assert _ran(broker_dir) == 2
    # The door itself: the secret first, then it serves submissions only.
    with socket.create_connection(("127.0.0.1", int(port)), timeout=15) as s:
        assert _read_to_nul(s) == secret.encode()
        s.sendall(b"".join(f.encode() + b"\0" for f in ["/", "1", "whoami", "0"]))
        assert _read_to_nul(s) == b"F"


def _read_to_nul(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\0"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.rstrip(b"\0")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_the_door_answers_no_other_user(
    cluster: Cluster, broker_dir: Path, installed: Path
) -> None:
    _sh(cluster, broker_dir, installed, "whoami")
    port = _door(broker_dir).read_text().split()[0]
    probe = (
        "import encodings.idna, os, socket, sys; os.setgid(65534); os.setuid(65534)\n"
        "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=15)\n"
        "try:\n    print(len(s.recv(100)))\n"
        "except (ConnectionResetError, BrokenPipeError):\n    print(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, port], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.strip() == "0", done.stderr  # closed, not a byte of the secret


# --- a broker that ends before answering: the command is never done twice --------------


def _half_broker(listener: socket.socket, hello: bytes, seen: list[bytes]) -> None:
    """Accept one connection, say `hello`, read a request, and close unanswered."""
    conn, _ = listener.accept()
    with conn:
        if hello:
            conn.sendall(hello)
        conn.settimeout(10)
        seen.append(conn.recv(1 << 20))


def test_schedctl_py_never_runs_a_command_its_broker_may_have_run(
    cluster: Cluster, broker_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDULERD_BROKER_DIR", str(broker_dir))
    path = fast.broker_path()  # as schedctl-py names it (same interpreter and package)
    assert path is not None
    seen: list[bytes] = []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(1)
        t = threading.Thread(target=_half_broker, args=(listener, b"", seen))
        t.start()
        before = len(cluster.client.list_jobs())
        done = schedctl(cluster, broker_dir, "submit", "--", "true")
        t.join(10)
    assert seen and b"submit" in seen[0]
    assert done.returncode == 1 and "may or may not have been done" in done.stderr
    assert len(cluster.client.list_jobs()) == before  # not submitted a second time


def test_the_bash_schedctl_never_runs_a_command_its_broker_may_have_run(
    cluster: Cluster, broker_dir: Path, installed: Path
) -> None:
    _sh(cluster, broker_dir, installed, "whoami")
    door = _door(broker_dir)
    pid = _started(broker_dir)
    os.kill(pid, signal.SIGKILL)  # it leaves its door's file behind
    wait_for("the broker to end", lambda: not _alive(pid), timeout_s=10)
    for leftover in broker_dir.glob("*.sock"):
        leftover.unlink()  # (schedctl-py, if asked, would start a new one)
    seen: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        door.write_text(f"{listener.getsockname()[1]} {'ab' * 16}\n")
        t = threading.Thread(target=_half_broker, args=(listener, b"ab" * 16 + b"\0", seen))
        t.start()
        before = len(cluster.client.list_jobs())
        done = _sh(cluster, broker_dir, installed, "submit", "--", "true")
        t.join(10)
    assert seen and b"submit" in seen[0]
    assert done.returncode == 1 and "may or may not have been done" in done.stderr
    assert len(cluster.client.list_jobs()) == before
    assert _ran(broker_dir) == 1  # schedctl-py was not asked to do it again


def test_a_broker_at_its_end_answers_the_callers_it_had_queued(tmp_path: Path) -> None:
    """A caller whose connection the broker had not yet accepted when it ended (idle,
    or its code replaced) is told to run the command itself: an end of file would read
    as "may or may not have been done" for a command that never ran (the deployment
    guide's test met it)."""
    from schedulerd.cli.broker import Broker

    path = str(tmp_path / "b.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    callers = []
    for _ in range(3):  # queued, never accepted by the serving loop
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        c.sendall(b"a request the broker will not read")
        callers.append(c)
    Broker(path, 60.0, None).turn_away(listener)
    listener.close()
    for c in callers:
        c.settimeout(5)
        with c:
            assert c.recv(16) == b"f" + (0).to_bytes(4, "big")  # "run it yourself"
