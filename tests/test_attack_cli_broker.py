"""Issue 15 item 5, attacked: the `schedctl` broker (docs/cli-broker.md) as an outsider
and a hostile local user would try it, against a real daemon, with `schedctl` run as a
process as a user runs it. Every broker a test starts is ended by the test (the
broker_dir fixture)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import test_cli_broker as base
from harness import Cluster, wait_for
from test_cli_broker import (
    REPO,
    _brokers,
    _door,
    _job_id,
    _ran,
    _sh,
    _started,
    _via_broker,
    schedctl,
)

from schedulerd.api.v1 import jobs_pb2
from schedulerd.cli import fast
from schedulerd.cli.broker import MAX_CHANNELS, READ_TIMEOUT_S, Broker
from schedulerd.cli.main import Connection
from schedulerd.client import Client

MARKER = "MARKER-OF-THE-OTHER-CHECKOUT"
# The broker tests' fixtures: a daemon, a broker directory whose brokers end with the
# test, and scripts/schedctl installed beside schedctl-py.
cluster = base.cluster
broker_dir = base.broker_dir
installed = base.installed


@pytest.fixture
def other_checkout(broker_dir: Path) -> Path:
    """A second checkout of schedulerd, its `submit --help` marked: which code answered
    a command shows in its words."""
    root = broker_dir / "checkout"
    shutil.copytree(
        REPO / "schedulerd", root / "schedulerd", ignore=shutil.ignore_patterns("__pycache__")
    )
    main = root / "schedulerd" / "cli" / "main.py"
    text = main.read_text()
    assert "a job array: one job per index" in text
    main.write_text(text.replace("a job array: one job per index", f"{MARKER} one job per index"))
    return root


# --- whose code answers -------------------------------------------------------------


def test_a_relative_pythonpath_is_the_callers_code_in_its_broker(
    cluster: Cluster, broker_dir: Path, other_checkout: Path
) -> None:
    # PYTHONPATH=. in a checkout: the broker, started in /, must import that checkout,
    # not whatever "." is from / (here: the installed package, another checkout).
    env = {"PYTHONPATH": "."}
    first = schedctl(cluster, broker_dir, "submit", "--help", env=env, cwd=other_checkout)
    assert first.returncode == 0 and MARKER in first.stdout, first.stderr
    _started(broker_dir)
    second = schedctl(
        cluster, broker_dir, "submit", "--help", env=env, cwd=other_checkout, importtime=True
    )
    assert second.returncode == 0 and _via_broker(second), second.stderr
    assert MARKER in second.stdout  # the caller's code, not another installation's


def test_the_bash_schedctl_of_a_relative_install_finds_its_own_broker(
    cluster: Cluster, broker_dir: Path, installed: Path, other_checkout: Path
) -> None:
    # The same absolute script, PYTHONPATH=. in two checkouts: two installations.
    def sh(cwd: Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
        env.update(
            PYTHONPATH=".",
            PWD=str(cwd),
            SCHEDULERD_ADDRESS=cluster.address,
            SCHEDULERD_BROKER_DIR=str(broker_dir),
            SCHEDULERD_BROKER_IDLE_S="30",
        )
        return subprocess.run(
            [str(installed / "schedctl"), "submit", "--help"],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=60,
        )

    assert MARKER not in sh(REPO).stdout
    _door(broker_dir)
    assert MARKER not in sh(REPO).stdout and _ran(broker_dir) == 1  # through its door
    done = sh(other_checkout)
    assert done.returncode == 0 and MARKER in done.stdout, done.stderr  # not REPO's door


# --- what a command is given: the same through the broker as without -----------------


def test_a_submission_from_a_linked_directory_gets_the_directory_python_gets(
    cluster: Cluster, broker_dir: Path, installed: Path
) -> None:
    real = broker_dir / "real"
    real.mkdir()
    link = broker_dir / "link"
    link.symlink_to(real)

    def submit(**kw: str) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
        env.update(
            PWD=str(link),  # the shell's logical directory, as after `cd link`
            SCHEDULERD_ADDRESS=cluster.address,
            SCHEDULERD_CONSUMER="/lab",
            SCHEDULERD_BROKER_DIR=str(broker_dir),
            SCHEDULERD_BROKER_IDLE_S="30",
            **kw,
        )
        done = subprocess.run(
            [str(installed / "schedctl"), "submit", "--", "true"],
            capture_output=True,
            text=True,
            env=env,
            cwd=link,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return _job_id(done.stdout)

    alone = submit(SCHEDULERD_BROKER="off")
    submit()  # (starts the broker)
    _door(broker_dir)
    served = submit()
    assert _ran(broker_dir) == 2  # the last one through the door, no Python
    dirs = {cluster.client.get_job(i).spec.working_dir for i in (alone, served)}
    assert dirs == {str(real.resolve())}


def _in_removed_dir(
    cluster: Cluster, broker_dir: Path, program: list[str], **kw: str
) -> subprocess.CompletedProcess[str]:
    gone = broker_dir / "gone"
    gone.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    env.update(
        SCHEDULERD_ADDRESS=cluster.address,
        SCHEDULERD_CONSUMER="/lab",
        SCHEDULERD_BROKER_DIR=str(broker_dir),
        SCHEDULERD_BROKER_IDLE_S="30",
        **kw,
    )
    return subprocess.run(
        ["bash", "-c", 'cd "$1" && rmdir "$1" && shift && exec "$@"', "-", str(gone), *program],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_a_removed_working_directory_is_said_not_a_traceback(
    cluster: Cluster, broker_dir: Path, installed: Path
) -> None:
    py = [sys.executable, "-m", "schedulerd.cli.fast"]
    for broker in ("off", "on"):
        jobs = _in_removed_dir(cluster, broker_dir, [*py, "jobs"], SCHEDULERD_BROKER=broker)
        assert jobs.returncode == 0 and "Traceback" not in jobs.stderr, jobs.stderr
        if broker == "on":
            _started(broker_dir)
        for program in ([*py, "submit"], [str(installed / "schedctl"), "submit"]):
            done = _in_removed_dir(
                cluster, broker_dir, [*program, "--", "true"], SCHEDULERD_BROKER=broker
            )
            assert done.returncode == 1, (program, done.stdout, done.stderr)
            assert "working directory is gone" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr


def test_times_are_shown_in_the_callers_zone(cluster: Cluster, broker_dir: Path) -> None:
    job = cluster.client.submit("/lab", ["true"])
    first = schedctl(cluster, broker_dir, "show", str(job.id), env={"TZ": "UTC0"})
    assert first.returncode == 0, first.stderr
    _started(broker_dir)  # a broker started with TZ=UTC0
    for zone in ("UTC0", "JST-9"):
        served = schedctl(cluster, broker_dir, "show", str(job.id), env={"TZ": zone})
        alone = schedctl(
            cluster, broker_dir, "show", str(job.id), env={"TZ": zone, "SCHEDULERD_BROKER": "off"}
        )
        assert served.returncode == alone.returncode == 0
        assert served.stdout == alone.stdout, zone


def test_an_id_past_any_job_is_refused_in_words(cluster: Cluster, broker_dir: Path) -> None:
    schedctl(cluster, broker_dir, "whoami")
    _started(broker_dir)
    for broker in ("on", "off"):
        for args in (["show", "9" * 20], ["cancel", "9" * 20 + "_1"], ["show", "0"]):
            done = schedctl(cluster, broker_dir, *args, env={"SCHEDULERD_BROKER": broker})
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            assert "no job" in done.stderr, done.stderr


# --- the broker's connections to daemons ---------------------------------------------


def _closed(client: Client) -> bool:
    """Whether a Client's channel was closed: a call on it then raises ValueError, on an
    open one to no daemon, an RpcError."""
    try:
        client.jobs.GetJob(jobs_pb2.GetJobRequest(id=1), timeout=0.2)
    except ValueError:
        return True
    except grpc.RpcError:
        return False
    raise AssertionError("a daemon answered at a port nothing listens on")


def test_a_connection_in_use_is_not_closed_by_more_connections(broker_dir: Path) -> None:
    # A command's client evicted (more than MAX_CHANNELS other daemons or tokens) while
    # its call is under way: closing it would cancel that call, a submission the daemon
    # may have queued, and its caller, told it failed, would submit it again.
    broker = Broker(str(broker_dir / "x.sock"), 60)
    ports = [_unused_port() for _ in range(MAX_CHANNELS + 1)]
    mine = broker._client(Connection(f"127.0.0.1:{ports[0]}", None, None, {}))

    def others() -> None:
        for port in ports[1:]:
            broker._client(Connection(f"127.0.0.1:{port}", None, None, {}))
            broker.release()

    t = threading.Thread(target=others)
    t.start()
    t.join(30)
    assert not _closed(mine)  # still this command's
    broker.release()  # the command ends: now it goes
    assert _closed(mine)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- bounded: a slow writer -----------------------------------------------------------


def _trickle(sock: socket.socket, data: bytes) -> bool:
    """Send `data` a byte every second; whether the peer closed before the end."""
    for i in range(len(data)):
        try:
            if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                return True
        except BlockingIOError:
            pass
        try:
            sock.sendall(data[i : i + 1])
        except OSError:
            return True
        time.sleep(1)
    return False


def test_a_request_trickled_a_byte_at_a_time_is_dropped(
    cluster: Cluster, broker_dir: Path, installed: Path
) -> None:
    # "A request must arrive within 10 s": in all, not 10 s for each byte (a peer that
    # sends one byte every few seconds would hold one of the broker's threads forever).
    _sh(cluster, broker_dir, installed, "whoami")
    _started(broker_dir)
    path = next(broker_dir.glob("*.sock"))
    slow = int(READ_TIMEOUT_S) + 8
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(fast.PROTOCOL + (1000).to_bytes(4, "big"))  # then its body, slowly
        assert _trickle(s, b"/" * slow)
    port, secret = _door(broker_dir).read_text().split()
    with socket.create_connection(("127.0.0.1", int(port)), timeout=15) as s:
        assert s.recv(100).rstrip(b"\0") == secret.encode()
        s.settimeout(None)
        assert _trickle(s, b"/" * slow)


# --- another user's directory --------------------------------------------------------


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make another user's directory")
def test_a_broker_directory_of_another_user_is_never_used(
    cluster: Cluster, installed: Path, tmp_path: Path
) -> None:
    # Another user made the directory (as /tmp/schedulerd-UID may be, before its user),
    # and put a door there whose listener knows "the secret": nothing is sent to it, and
    # no broker of ours starts there; the commands run all the same.
    planted = Path("/tmp") / f"schedctl-planted-{os.getpid()}"
    planted.mkdir(mode=0o700)
    try:
        seen: list[bytes] = []
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            listener.settimeout(0.5)
            stop = threading.Event()

            def accept() -> None:
                while not stop.is_set():
                    try:
                        conn, _ = listener.accept()
                    except TimeoutError:
                        continue
                    with conn:
                        conn.sendall(b"ab" * 16 + b"\0")
                        conn.settimeout(2)
                        with contextlib.suppress(OSError):
                            seen.append(conn.recv(1 << 16))

            t = threading.Thread(target=accept)
            t.start()
            name = _door_name(installed)
            (planted / name).write_text(f"{listener.getsockname()[1]} {'ab' * 16}\n")
            for p in (planted, planted / name):
                os.chown(p, 65534, 65534)
            try:
                for _ in range(2):
                    done = _sh(cluster, planted, installed, "submit", "--", "true")
                    assert done.returncode == 0 and "submitted job" in done.stdout, done.stderr
            finally:
                stop.set()
                t.join(10)
        assert not seen
        assert not _brokers(planted) and not list(planted.glob("*.sock"))
    finally:
        # The brokers schedctl-py started (each refuses that directory and ends) gone
        # first: one starting after the removal would make the directory anew.
        wait_for("no broker for that directory", lambda: not _starting(planted), timeout_s=30)
        shutil.rmtree(planted, ignore_errors=True)


def _starting(directory: Path) -> list[int]:
    """The broker processes started for a socket in `directory` (by their command line)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"schedulerd.cli.broker" in argv and any(
            a.startswith(str(directory).encode() + b"/") for a in argv
        ):
            found.append(int(proc.name))
    return found


def _door_name(installed: Path) -> str:
    """The door's file name as scripts/schedctl makes it (it exports it to schedctl-py)."""
    probe = installed / "probe"
    probe.write_text('#!/bin/bash\necho "$SCHEDULERD_SH_NAME"\n')
    probe.chmod(0o755)
    saved = installed / "schedctl-py.saved"
    (installed / "schedctl-py").rename(saved)
    probe.rename(installed / "schedctl-py")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
        out = subprocess.run(
            [str(installed / "schedctl"), "whoami"], capture_output=True, text=True, env=env
        ).stdout
    finally:
        (installed / "schedctl-py").unlink()
        saved.rename(installed / "schedctl-py")
    return out.strip()


def test_a_submission_too_large_for_the_door_is_run_as_without_it(
    cluster: Cluster, broker_dir: Path, installed: Path
) -> None:
    # Over the broker's 1 MiB: as with schedctl-py, run in process (where the daemon
    # refuses the argv in its words), not "the broker ended before answering (the
    # command may or may not have been done)" for a command that was never run.
    _sh(cluster, broker_dir, installed, "whoami")
    _door(broker_dir)
    big = ["x" * 120_000] * 9  # (each below the kernel's 128 KiB for one argument)
    served = _sh(cluster, broker_dir, installed, "submit", "--", "true", *big)
    alone = _sh(
        cluster, broker_dir, installed, "submit", "--", "true", *big, SCHEDULERD_BROKER="off"
    )
    assert "bytes of argv" in alone.stderr
    assert (served.returncode, served.stdout, served.stderr) == (
        alone.returncode,
        alone.stdout,
        alone.stderr,
    )
    # And the door still serves the next one.
    ran = _ran(broker_dir)
    done = _sh(cluster, broker_dir, installed, "submit", "--", "true")
    assert done.returncode == 0 and _ran(broker_dir) == ran, done.stderr


def test_a_broker_whose_code_changed_anywhere_answers_no_more(
    cluster: Cluster, broker_dir: Path, other_checkout: Path
) -> None:
    # An upgrade that changes a module of the package other than the CLI's own files
    # (here schedulerd/arrays.py, whose words `submit --array` prints): the broker
    # must not answer with the code it imported before.
    env = {"PYTHONPATH": str(other_checkout)}
    args = ["submit", "--array", "5-1", "--", "true"]
    first = schedctl(cluster, broker_dir, *args, env=env, cwd=other_checkout)
    assert "the range ends before it starts" in first.stderr, first.stderr
    _started(broker_dir)
    served = schedctl(cluster, broker_dir, *args, env=env, cwd=other_checkout, importtime=True)
    assert _via_broker(served) and served.stderr.count("the range ends") == 1
    arrays = other_checkout / "schedulerd" / "arrays.py"
    new = arrays.with_suffix(".new")
    new.write_text(arrays.read_text().replace("the range ends before it starts", MARKER))
    new.replace(arrays)  # as an installer replaces a file
    after = schedctl(cluster, broker_dir, *args, env=env, cwd=other_checkout)
    assert after.returncode == first.returncode and MARKER in after.stderr, after.stderr


def test_ctrl_c_while_the_broker_works_ends_as_in_process(
    cluster: Cluster, broker_dir: Path
) -> None:
    # A daemon address that accepts and never answers: the broker's call waits.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        schedctl(cluster, broker_dir, "whoami")
        _started(broker_dir)
        results = []
        held: list[socket.socket] = []
        for broker in ("on", "off"):
            env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
            env.update(
                SCHEDULERD_ADDRESS=address,
                SCHEDULERD_BROKER_DIR=str(broker_dir),
                SCHEDULERD_BROKER=broker,
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", "schedulerd.cli.fast", "jobs"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            silent.settimeout(60)
            held.append(silent.accept()[0])  # its call reached the "daemon": it waits
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            results.append((proc.returncode, "Traceback" in err))
        for conn in held:
            conn.close()
        assert results[0] == results[1] == (130, False), results


def test_many_submissions_at_once_are_each_done_once(
    cluster: Cluster, broker_dir: Path, installed: Path
) -> None:
    # More at once than the broker serves (MAX_ACTIVE): the rest go through schedctl-py,
    # or in process; none is lost, none is done twice.
    _sh(cluster, broker_dir, installed, "whoami")
    _door(broker_dir)
    before = {j.id for j in cluster.client.list_jobs(states=())}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    env.update(
        SCHEDULERD_ADDRESS=cluster.address,
        SCHEDULERD_CONSUMER="/lab",
        SCHEDULERD_BROKER_DIR=str(broker_dir),
        SCHEDULERD_BROKER_IDLE_S="60",
    )
    n = 48
    procs = [
        subprocess.Popen(
            [str(installed / "schedctl"), "submit", "--name", f"many-{i}", "--", "true"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(n)
    ]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        ids.append(_job_id(out))
    assert len(set(ids)) == n
    new = [j for j in cluster.client.list_jobs(states=()) if j.id not in before]
    assert sorted(j.spec.name for j in new) == sorted(f"many-{i}" for i in range(n))


KNOCKER = """
import encodings.idna, os, socket, sys, time  # (all before the uid drops: /root is 0700)
os.setgroups([]); os.setgid(65534); os.setuid(65534)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
    except OSError:
        pass
    time.sleep(0.3)
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_users_knocking_does_not_keep_a_broker_up(
    cluster: Cluster, broker_dir: Path
) -> None:
    env = {"SCHEDULERD_BROKER_IDLE_S": "3", "SCHEDULERD_SH_NAME": "knock.tcp"}
    schedctl(cluster, broker_dir, "whoami", env=env)
    port = _door(broker_dir).read_text().split()[0]
    pid = _started(broker_dir)
    knocker = subprocess.Popen([sys.executable, "-c", KNOCKER, port, "60"])
    try:
        wait_for("the idle broker to end", lambda: not base._alive(pid), timeout_s=40)
        assert knocker.poll() is None  # it knocked all along
    finally:
        knocker.kill()
        knocker.wait()


def _busy_broker(listener: socket.socket) -> None:
    """As the broker answers when it runs MAX_ACTIVE commands already: "f" (run it
    yourself), and the connection closed without reading the request."""
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"f" + (0).to_bytes(4, "big"))


def test_a_busy_broker_that_closes_unread_has_the_command_run_in_process(
    cluster: Cluster, broker_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen with 48 submissions at once: the broker, full, said "f" and closed before
    # schedctl-py had sent its request; the send failed, and schedctl-py said "may or
    # may not have been done" of a command no broker had (it never got all of it).
    monkeypatch.setenv("SCHEDULERD_BROKER_DIR", str(broker_dir))
    path = fast.broker_path()
    assert path is not None
    padding = {f"SCHEDULERD_PAD{i}": "x" * 100_000 for i in range(4)}  # more than a
    with socket.socket(socket.AF_UNIX) as listener:  # socket buffer: the send blocks
        listener.bind(path)
        listener.listen(1)
        t = threading.Thread(target=_busy_broker, args=(listener,))
        t.start()
        done = schedctl(cluster, broker_dir, "submit", "--name", "busy", "--", "true", env=padding)
        t.join(10)
    assert done.returncode == 0 and "may or may not" not in done.stderr, done.stderr
    assert [j.spec.name for j in cluster.client.list_jobs()].count("busy") == 1


def test_bytes_that_are_not_text_are_refused_in_words(
    cluster: Cluster, broker_dir: Path, installed: Path
) -> None:
    # A shell passes any bytes; the API's strings are UTF-8. Said, as without the broker,
    # rather than a traceback from protobuf.
    _sh(cluster, broker_dir, installed, "whoami")
    _door(broker_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULERD_")}
    env.update(
        SCHEDULERD_ADDRESS=cluster.address,
        SCHEDULERD_CONSUMER="/lab",
        SCHEDULERD_BROKER_DIR=str(broker_dir),
    )
    for args in (
        [b"submit", b"--", b"echo", b"\xff\xfe"],
        [b"submit", b"--name", b"\xff", b"--", b"true"],
        [b"submit", b"--env", b"A=\xff", b"--", b"true"],
    ):
        results = []
        for broker in (b"on", b"off"):
            done = subprocess.run(
                [bytes(installed / "schedctl"), *args],
                capture_output=True,
                env={**env, "SCHEDULERD_BROKER": broker.decode()},
                timeout=60,
            )
            results.append((done.returncode, done.stdout, done.stderr))
        assert results[0] == results[1], args
        code, _, err = results[0]
        assert code == 1 and b"is not UTF-8 text" in err and b"Traceback" not in err, err
