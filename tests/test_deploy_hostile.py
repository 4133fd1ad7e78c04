"""A hostile review of the cluster deployment (config files, sd_notify, SIGHUP reloads,
the units, MASTER_ADDR/MASTER_PORT): the attacks that are refused as they should be,
kept as regression tests. Attacks that succeeded are bugs reported separately, not here.

Each test makes its own files under tmp_path, its own processes (stopped at the end),
and, where it needs one, a throwaway Unix user."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Cluster, free_port, remove_agent_cgroups, running_cluster, wait_for
from unix_users import throwaway_user

from agent.main import build_parser as agent_parser
from schedulerd.client import Client, ClientError
from schedulerd.configfile import (
    MAX_BYTES,
    ConfigError,
    parse_args_with_config,
    read_config,
)
from schedulerd.daemon.main import build_parser as daemon_parser
from schedulerd.sdnotify import MAX_STATUS_CHARS, Notifier, loop_wait_s

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "deploy" / "systemd"
SYSTEM_PYTHON = Path("/usr/bin/python3")

POLICY_A = "run_as_root: true\nversion: 1\nconsumers:\n  a: {owned: 2}\n"
POLICY_AB = "run_as_root: true\nversion: 1\nconsumers:\n  a: {owned: 2}\n  b: {owned: 2}\n"


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def _toml(text: str) -> str:
    """A TOML basic string, escaped here by hand (not by the code under test)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _problems(
    path: Path, parser_factory: Callable[[], argparse.ArgumentParser] = daemon_parser
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        read_config(path, parser_factory())
    return caught.value.problems


# --- the loader against hostile files ----------------------------------------------------

HOSTILE = [
    # (name, bytes of the file, the line every problem names, a piece of the reason)
    ("carriage-returns-only", b'listen = "127.0.0.1:1"\rtick = 2\r', 1, "expected newline"),
    ("bom", '\ufefflisten = "127.0.0.1:1"\n'.encode(), 1, "invalid statement"),
    ("raw-nul", b'listen = "127.0.0.1:1"\x00\n', 1, "expected newline"),
    ("not-utf8", b'tick = 1\nlisten = "\xff\xfe"\n', 2, "not UTF-8"),
    ("lookalike-key", '"l\u0456sten" = "x"\n'.encode(), 1, "unknown key"),
    ("zero-width-key", '"listen\u200b" = "x"\n'.encode(), 1, "unknown key"),
    ("upper-case-key", b'LISTEN = "x"\n', 1, "unknown key"),
    ("underscore-key", b'log_level = "DEBUG"\n', 1, "did you mean 'log-level'"),
    ("quoted-twice", b'"listen" = "a"\nlisten = "b"\n', 2, "set twice (first on line 1)"),
    ("dotted", b'admin.x = "a"\n', 1, "tables are not allowed"),
    ("array-of-tables", b"[[admin]]\nname = 'root'\n", 1, "expected a string, got a table"),
    ("table-after-keys", b'tick = 1\n[tick2]\nlisten = "x"\n', 2, "tables are not allowed"),
    ("reserved-no-config", b"no-config = true\n", 1, "cannot be set in a config file"),
    ("reserved-print", b"print-config = true\n", 1, "cannot be set in a config file"),
    ("reserved-help", b"help = true\n", 1, "cannot be set in a config file"),
    ("reserved-config", b'config = "/etc/passwd"\n', 1, "cannot be set in a config file"),
    ("bool-as-string", b'insecure = "false"\n', 1, "expected a boolean"),
    ("int-as-float", b"local-agent-fake-gpus = 4.0\n", 1, "expected an integer"),
    ("date", b"listen = 1979-05-27T07:32:00Z\n", 1, "date or time"),
    ("node-timeout-nan", b"node-timeout = nan\n", 1, "positive number"),
    ("node-timeout-inf", b"node-timeout = inf\n", 1, "positive number"),
    ("node-timeout-zero", b"node-timeout = 0\n", 1, "positive number"),
    ("heartbeat-negative", b"heartbeat = -2.0\n", 1, "positive number"),
    ("log-level-garbage", b'log-level = "LOUD"\n', 1, "invalid choice"),
    ("log-level-number", b"log-level = 10\n", 1, "expected a string"),
    ("admin-table", b"admin = { name = 'x' }\n", 1, "tables are not allowed"),
    ("admin-mixed", b'admin = ["root", ["nested"]]\n', 1, "element 2"),
]


@pytest.mark.parametrize(("name", "data", "line", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_file_is_refused_at_its_line(
    tmp_path: Path, name: str, data: bytes, line: int, reason: str
) -> None:
    path = _write(tmp_path / f"{name}.toml", data)
    problems = _problems(path)
    assert problems, name
    for p in problems:
        assert p.startswith(f"{path}:{line}: "), problems
    assert any(reason in p for p in problems), problems


def test_the_agents_exclusive_pair_is_refused_in_one_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "agent.toml", "fake-gpus = 1\nnode = 'n1'\nfake-gpus-fallback = 2\n")
    assert _problems(path, agent_parser) == [
        f"{path}:3: fake-gpus-fallback: not allowed with 'fake-gpus' (line 1)"
    ]


@pytest.mark.parametrize(
    "text",
    [
        'node = "../../etc"\n',
        'node = "-rf"\n',
        'node = ""\n',
        'node = "a/b"\n',
        'node = "gpu\\u0000x"\n',
        'node = ".hidden"\n',
    ],
)
def test_a_node_name_that_would_name_another_folder_is_refused(tmp_path: Path, text: str) -> None:
    """The node name becomes <state-dir>/<node> and agent-<node>.lock: a file must not
    reach out of them."""
    path = _write(tmp_path / "agent.toml", text)
    (problem,) = _problems(path, agent_parser)
    assert problem.startswith(f"{path}:1: node: "), problem


def test_a_huge_file_is_refused_without_being_read_whole(tmp_path: Path) -> None:
    path = _write(tmp_path / "big.toml", b"# " + b"x" * (MAX_BYTES * 4) + b"\n")
    began = time.monotonic()
    (problem,) = _problems(path)
    assert "too large" in problem, problem
    assert time.monotonic() - began < 5


def test_huge_values_within_the_size_limit_are_read(tmp_path: Path) -> None:
    users = [f"u{i}" for i in range(50_000)]
    path = _write(tmp_path / "many.toml", "admin = " + json.dumps(users) + "\n")
    assert len(path.read_bytes()) < MAX_BYTES
    found = read_config(path, daemon_parser())
    assert found["admin"] == (users, 1)


@pytest.mark.parametrize("what", ["directory", "dev-null", "dev-zero", "dangling-link"])
def test_what_is_not_a_plain_file_of_root_is_refused(tmp_path: Path, what: str) -> None:
    if what == "directory":
        path = tmp_path / "conf.d"
        path.mkdir()
    elif what == "dangling-link":
        path = tmp_path / "link.toml"
        path.symlink_to(tmp_path / "nowhere.toml")
    else:
        path = Path("/dev/null" if what == "dev-null" else "/dev/zero")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}: "), problem


def test_a_file_made_writable_after_a_first_good_read_is_refused_at_the_reread(
    tmp_path: Path,
) -> None:
    """SIGHUP re-reads with the same check: a file made writable by others since the
    start (or given to another owner) is refused then too. (Group write alone is fine
    while root, the owner, is alone in the file's group: filetrust.)"""
    path = _write(tmp_path / "s.toml", 'log-level = "DEBUG"\n')
    assert read_config(path, daemon_parser())["log_level"] == ("DEBUG", 1)
    path.chmod(0o666)
    (problem,) = _problems(path)
    assert "writable by others" in problem
    path.chmod(0o644)
    os.chown(path, 4242, -1)
    (problem,) = _problems(path)
    assert "owned by uid 4242" in problem


def test_no_config_ignores_a_poisoned_default_and_a_flag_beats_the_file(tmp_path: Path) -> None:
    poisoned = _write(tmp_path / "default.toml", 'admin = ["mallory"]\ncolour = 1\n')
    args, _ = parse_args_with_config(daemon_parser(), ["--no-config"], poisoned)
    assert args.admin == [] and args.config_path is None
    good = _write(tmp_path / "good.toml", 'admin = ["mallory"]\ninsecure = true\n')
    args, sources = parse_args_with_config(
        daemon_parser(), ["--config", str(good), "--admin", "alice"], poisoned
    )
    assert args.admin == ["alice"] and sources["admin"].where == "command line"
    assert args.insecure is True and sources["insecure"].where == f"{good}:2"


@pytest.mark.parametrize("module", ["schedulerd.daemon.main", "agent.main"])
def test_a_relative_config_is_reread_from_where_it_was_found_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    """`--config rel.toml` then SIGHUP once the process is elsewhere: the re-read names
    the file that was read at the start, never one of the new working directory."""
    import importlib

    parse_args = importlib.import_module(module).parse_args
    first = tmp_path / "first"
    first.mkdir()
    _write(first / "rel.toml", "node = 'n1'\n" if module == "agent.main" else "tick = 2\n")
    monkeypatch.chdir(first)
    args = parse_args(["--config", "rel.toml"])
    assert args.config_path == first / "rel.toml" and args.config_path.is_absolute()
    other = tmp_path / "other"
    other.mkdir()
    _write(other / "rel.toml", "colour = 1\n")
    monkeypatch.chdir(other)
    build = importlib.import_module(module).build_parser
    assert read_config(args.config_path, build()) != {}


def test_config_and_no_config_together_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.toml", "tick = 1\n")
    with pytest.raises(SystemExit) as exited:
        parse_args_with_config(daemon_parser(), ["--config", str(path), "--no-config"], None)
    assert exited.value.code == 2


@pytest.mark.parametrize("module", ["schedulerd.daemon", "agent"])
def test_print_config_of_hostile_values_reads_back_to_the_same(tmp_path: Path, module: str) -> None:
    """Strings with quotes, backslashes, newlines, tabs, control characters, non-ASCII
    and a NUL (possible in a file, never on a command line) are printed as TOML that loads
    back to the same values."""
    weird = 'a "quoted" \\ back\\slash\ttab\nnewline \x01 \x7f é 漢 \U0001f600 \x00 end'
    if module == "agent":
        # (`pool` is a name, checked like a node's: weird text there is refused.)
        text = f"node = 'n1'\njob-path = {_toml(weird)}\n"
        keys: tuple[str, ...] = ("job-path",)
    else:
        text = f"advertise = {_toml(weird)}\nadmin = [{_toml(weird)}, '']\n"
        keys = ("advertise",)
    first = _write(tmp_path / "first.toml", text)
    out = subprocess.run(
        [sys.executable, "-m", module, "--config", str(first), "--print-config"],
        capture_output=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    printed = tomllib.loads(out.decode())
    for key in keys:
        assert printed[key] == weird, key
    if module != "agent":
        assert printed["admin"] == [weird, ""]
    second = _write(tmp_path / "second.toml", out)
    again = subprocess.run(
        [sys.executable, "-m", module, "--config", str(second), "--print-config"],
        capture_output=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    strip = [line.split("  # ")[0] for line in out.decode().splitlines()[1:]]
    strip_again = [line.split("  # ")[0] for line in again.decode().splitlines()[1:]]
    assert strip == strip_again


def test_print_config_prints_paths_never_the_secrets_they_hold(tmp_path: Path) -> None:
    secret = "s3cr3t-token-value-that-must-not-leak"
    token = _write(tmp_path / "token", secret, 0o600)
    key = _write(tmp_path / "node.key", f"-----BEGIN PRIVATE KEY-----\n{secret}\n", 0o600)
    path = _write(
        tmp_path / "agent.toml",
        f"node = 'n1'\ntoken-file = '{token}'\ntls-key = '{key}'\n",
    )
    out = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(path), "--print-config"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert secret not in out.stdout + out.stderr
    assert f'token-file = "{token}"' in out.stdout


# --- sd_notify against hostile environments ------------------------------------------------


def test_a_notify_socket_that_is_a_stream_socket_missing_or_relative_changes_nothing(
    tmp_path: Path,
) -> None:
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.bind(str(tmp_path / "stream.sock"))
    stream.listen()
    try:
        for value in (
            str(tmp_path / "stream.sock"),
            str(tmp_path / "missing.sock"),
            "relative.sock",
            "@",
            "@schedulerd-nobody-listens-here-" + os.urandom(4).hex(),
        ):
            n = Notifier({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "1000000"}, pid=1)
            n.ready("x")
            n.status("y")
            n.watchdog()
            n.reloading()
            n.stopping("z")
            n.close()
    finally:
        stream.close()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("garbage", "", None),
        ("", "", None),
        ("0", "", None),
        ("-5000000", "", None),
        ("1e6", "", None),
        (" 2000000 ", "", 2.0),
        ("2000000", "not-a-pid", None),
        ("2000000", "1", None),
        ("99999999999999999999999", "", 99999999999999999.999999),
    ],
)
def test_watchdog_usec_values(usec: str, pid: str, expected: float | None) -> None:
    env = {"WATCHDOG_USEC": usec, **({"WATCHDOG_PID": pid} if pid else {})}
    n = Notifier(env, pid=4242)
    if expected is None:
        assert n.watchdog_s is None
    else:
        assert n.watchdog_s == pytest.approx(expected)
        # A loop never sleeps longer than half the interval, nor longer than its tick.
        assert loop_wait_s(1.0, n) == min(1.0, expected / 2)


def test_a_status_is_one_bounded_line_that_cannot_forge_other_fields() -> None:
    name = f"schedulerd-hostile-{os.getpid()}-{os.urandom(3).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.status("ok\nREADY=1\nMAINPID=1\r\nWATCHDOG=trigger " + "x" * 100_000)
        got = sock.recv(1 << 20).decode()
        n.close()
    assert "\n" not in got and "\r" not in got
    assert got.startswith("STATUS=ok READY=1 MAINPID=1 WATCHDOG=trigger ")
    assert len(got) == len("STATUS=") + MAX_STATUS_CHARS


def test_children_do_not_inherit_the_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's local agent and every job start from an environment without
    NOTIFY_SOCKET/WATCHDOG_*: a child must not speak for the service."""
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier()
    try:
        assert n.enabled and n.watchdog_s == 30.0
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            assert key not in os.environ
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.environ))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "NOTIFY_SOCKET" not in child and "WATCHDOG" not in child
    finally:
        n.close()


# --- SIGHUP against a running daemon -------------------------------------------------------


class ConfiguredDaemon:
    """The daemon started as its unit starts it: --config FILE only."""

    def __init__(self, root: Path, policy: str = POLICY_A, extra: str = "") -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.policy = _write(root / "policy.yaml", policy)
        self.config = root / "schedulerd.toml"
        self.extra = extra
        self.write_config()
        self.log = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = Client(self.address, timeout_s=10)

    def write_config(self, more: str = "") -> None:
        _write(
            self.config,
            f'listen = "{self.address}"\ndb = "{self.root / "s.db"}"\n'
            f'policy = "{self.policy}"\ntick = 0.2\n{self.extra}{more}',
        )

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "schedulerd.daemon", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        wait_for("the daemon to serve", self._serving, every_s=0.2)
        # The SIGHUP handler is installed once it serves; give it the turn that does so.
        time.sleep(0.5)

    def _serving(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.text()[-2000:]
        try:
            self.client.whoami()
            return True
        except ClientError:
            return False

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, piece: str, count: int = 1) -> None:
        wait_for(f"{piece!r} x{count} in the log", lambda: self.text().count(piece) >= count)

    def stop(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[ConfiguredDaemon]:
    d = ConfiguredDaemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()


def _consumers(c: Client) -> list[str]:
    return [x.path for x in c.consumers().consumers]


def test_a_sighup_storm_during_submissions_keeps_the_daemon_whole(
    configured: ConfiguredDaemon,
) -> None:
    """Hundreds of SIGHUPs while the policy file flips between two valid versions and
    jobs are submitted: every submission answered, never a policy that is neither file,
    the daemon alive and serving, and the last file in force at the end."""
    d = configured
    d.start()
    c = d.client
    stop = threading.Event()
    submitted: list[int] = []
    errors: list[BaseException] = []
    seen: set[tuple[str, ...]] = set()

    def submit() -> None:
        with Client(d.address, timeout_s=10) as mine:
            while not stop.is_set():
                try:
                    job = mine.submit("/a", [sys.executable, "-c", "pass"], 1, name="storm")
                    submitted.append(job.id)
                    seen.add(tuple(_consumers(mine)))
                except BaseException as e:
                    errors.append(e)
                    return

    worker = threading.Thread(target=submit)
    worker.start()
    try:
        for i in range(300):
            if i % 25 == 0:
                # Atomically, as an editor that renames does: never a torn file here.
                tmp = d.root / "policy.yaml.new"
                _write(tmp, POLICY_AB if (i // 25) % 2 else POLICY_A)
                tmp.replace(d.policy)
            d.hup()
            time.sleep(0.005)
    finally:
        stop.set()
        worker.join(30)
    assert not errors, errors
    assert len(submitted) > 10
    assert seen <= {("/", "/a"), ("/", "/a", "/b")}, seen
    assert d.proc is not None and d.proc.poll() is None
    _write(d.policy, POLICY_AB)
    d.hup()
    wait_for("the last file in force", lambda: _consumers(c) == ["/", "/a", "/b"])
    assert "reload failed" not in d.text()
    assert "Traceback" not in d.text()
    # Unchanged files make no new policy version: far fewer versions than signals.
    assert c.get_policy().version < 60


def test_a_reloaded_policy_that_orphans_waiting_jobs_is_refused(
    configured: ConfiguredDaemon,
) -> None:
    d = configured
    d.policy.write_text(POLICY_AB)
    d.start()
    c = d.client
    # No node: the job waits on /b for ever.
    job = c.submit("/b", [sys.executable, "-c", "pass"], 1, name="waits-on-b")
    before = c.get_policy().version
    _write(d.policy, POLICY_A)
    d.hup()
    d.wait_log("the policy in force stays")
    assert "/b (1 jobs)" in d.text() or "b (1 jobs)" in d.text(), d.text()[-2000:]
    assert c.get_policy().version == before
    assert _consumers(c) == ["/", "/a", "/b"]
    assert c.get_job(job.id).spec.consumer == "/b"


@pytest.mark.parametrize(
    ("more", "expect"),
    [
        ("colour = 'red'\n", "colour: unknown key"),
        ('log-level = "LOUD"\n', "log-level: invalid choice"),
        ("[daemon]\nx = 1\n", "daemon: tables are not allowed"),
        ("admin = 'root'\n", "admin: expected an array of strings"),
        ("tick = 0.2\n", "tick: set twice"),
    ],
)
def test_a_broken_config_at_sighup_changes_nothing(
    configured: ConfiguredDaemon, more: str, expect: str
) -> None:
    d = configured
    d.start()
    before = d.client.get_policy().version
    _write(d.policy, POLICY_AB)  # a new policy that must NOT come in with a broken config
    d.write_config(more)
    d.hup()
    d.wait_log("nothing changed; the config file has errors")
    assert expect in d.text(), d.text()[-1500:]
    assert d.client.get_policy().version == before
    assert _consumers(d.client) == ["/", "/a"]
    assert d.proc is not None and d.proc.poll() is None


def test_a_config_file_gone_or_made_writable_at_sighup_changes_nothing(
    configured: ConfiguredDaemon,
) -> None:
    d = configured
    d.start()
    _write(d.policy, POLICY_AB)
    d.config.chmod(0o666)
    d.hup()
    d.wait_log("writable by others")
    assert _consumers(d.client) == ["/", "/a"]
    d.config.chmod(0o644)
    moved = d.config.rename(d.root / "elsewhere.toml")
    d.hup()
    d.wait_log("nothing changed; the config file has errors", 2)
    assert _consumers(d.client) == ["/", "/a"]
    moved.rename(d.config)
    d.hup()
    wait_for("the new policy", lambda: _consumers(d.client) == ["/", "/a", "/b"])


_ASK_AS_USER = r"""
import sys
from schedulerd.client import Client, ClientError
c = Client(sys.argv[1], timeout_s=10)
for line in sys.stdin:
    try:
        c.audit(limit=1)
        answer = "allowed"
    except ClientError as e:
        answer = "denied:" + e.code.name
    print(answer, c.whoami().cluster_admin, flush=True)
"""


def test_admin_granted_and_revoked_by_sighup_applies_to_a_connection_already_open(
    configured: ConfiguredDaemon,
) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no system python for the other user")
    d = configured
    with throwaway_user("sdh") as user:
        d.start()
        # The venv's python lives under /root (0700 here): the system's, with the venv's
        # packages, as tests/test_e2e_vouch.py runs a user's client.
        site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"), None)
        asker = subprocess.Popen(
            [str(SYSTEM_PYTHON), "-c", _ASK_AS_USER, d.address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": user.pw_dir,
                "PYTHONPATH": f"{REPO}:{site}" if site else str(REPO),
            },
            cwd="/",
        )
        assert asker.stdin is not None and asker.stdout is not None

        def ask() -> str:
            assert asker.stdin is not None and asker.stdout is not None
            asker.stdin.write("go\n")
            asker.stdin.flush()
            return asker.stdout.readline().strip()

        try:
            assert ask() == "denied:PERMISSION_DENIED False"
            d.write_config(f'admin = ["{user.pw_name}"]\n')
            d.hup()
            d.wait_log(f"cluster admins now {', '.join(sorted(['root', user.pw_name]))}")
            assert ask() == "allowed True"
            d.write_config()  # the key removed: back to the default (none)
            d.hup()
            d.wait_log("cluster admins now root\n")
            assert ask() == "denied:PERMISSION_DENIED False"
        finally:
            asker.stdin.close()
            asker.wait(10)


def test_an_admin_given_on_the_command_line_is_not_revoked_by_the_file(tmp_path: Path) -> None:
    d = ConfiguredDaemon(tmp_path, extra='admin = ["filed"]\n')
    try:
        with open(d.log, "wb") as out:
            d.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "schedulerd.daemon",
                    "--config",
                    str(d.config),
                    "--admin",
                    "flagged",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        wait_for("the daemon to serve", d._serving, every_s=0.2)
        time.sleep(0.5)
        _write(d.policy, POLICY_AB)
        d.write_config()  # the file drops its admin: the flag's stays
        d.hup()
        wait_for("the new policy", lambda: _consumers(d.client) == ["/", "/a", "/b"])
        assert "cluster admins now" not in d.text()
    finally:
        d.stop()


# --- SIGHUP against an agent -------------------------------------------------------------


def test_an_agent_survives_sighups_of_a_broken_config_and_applies_a_good_one(
    tmp_path: Path,
) -> None:
    node = f"hup-{os.getpid()}"
    cluster = Cluster(tmp_path, POLICY_A)
    config = tmp_path / "agent.toml"
    _write(config, 'log-level = "INFO"\n')
    log = tmp_path / f"agent-{node}.log"
    try:
        cluster.start_daemon()
        with open(log, "wb") as out:
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "--config",
                    str(config),
                    "--daemon",
                    cluster.address,
                    "--node",
                    node,
                    "--fake-gpus",
                    "1",
                    "--state-dir",
                    str(tmp_path / "agents"),
                    "--auth-socket",
                    str(tmp_path / "auth.sock"),
                    "--lock-dir",
                    str(tmp_path / "locks"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        cluster.agents[node] = agent
        cluster.wait_nodes_up(1)
        for broken in (
            "log-level = 'LOUD'\n",
            "colour = 1\n",
            "[x]\n",
            b"\xff\xfe\n",
            "log-level = 'DEBUG'\nlog-level = 'DEBUG'\n",
        ):
            _write(config, broken)
            agent.send_signal(signal.SIGHUP)
            time.sleep(0.3)
        config.chmod(0o666)
        agent.send_signal(signal.SIGHUP)
        wait_for(
            "six refusals",
            lambda: log.read_text().count("SIGHUP: nothing changed; the config file has") >= 6,
        )
        assert agent.poll() is None
        assert " DEBUG " not in log.read_text()
        _write(config, "log-level = 'DEBUG'\n")
        agent.send_signal(signal.SIGHUP)
        wait_for("the DEBUG level", lambda: "SIGHUP: log level DEBUG" in log.read_text())
        assert agent.poll() is None
        assert cluster.client.nodes()[0].state == 1
    finally:
        cluster.stop()
        remove_agent_cgroups(node)


# --- MASTER_ADDR / MASTER_PORT ---------------------------------------------------------------

_SHOW_ENV = (
    "import json, os; e = os.environ; print('ENV', json.dumps({k: e.get(k) for k in "
    "('SCHEDULERD_NODE', 'SCHEDULERD_NODE_RANK', 'MASTER_ADDR', 'MASTER_PORT')}))"
)


def _envs(c: Client, job_id: int) -> list[dict[str, str]]:
    text = b"".join(c.logs(job_id, follow=False)).decode(errors="replace")
    return [json.loads(line[4:]) for line in text.splitlines() if line.startswith("ENV ")]


def test_two_multi_node_jobs_meeting_on_one_address_get_different_ports_and_a_user_cannot_move_them(
    tmp_path: Path,
) -> None:
    """Four 1-GPU nodes that all report 127.0.0.1 (as agents on one machine do): two
    2-node jobs running at once meet on different ports, and MASTER_ADDR/MASTER_PORT in
    a job's own env do not replace the scheduler's (the ranks must agree)."""
    tag = os.getpid()
    nodes = {f"mp{i}-{tag}": 1 for i in range(4)}
    hold = "import time; time.sleep(4)"
    try:
        with running_cluster(tmp_path, POLICY_A.replace("owned: 2", "owned: 4"), nodes) as c:
            jobs = [
                c.client.submit(
                    "/a",
                    [sys.executable, "-c", f"{_SHOW_ENV}\n{hold}"],
                    2,
                    name=f"mp{i}",
                    env={"MASTER_ADDR": "attacker.example", "MASTER_PORT": "1"},
                )
                for i in range(2)
            ]

            def both_running() -> bool:
                return all(c.client.get_job(j.id).state == 2 for j in jobs)

            wait_for("both jobs running at once", both_running, 60)
            wait_for(
                "all ranks printed", lambda: all(len(_envs(c.client, j.id)) == 2 for j in jobs)
            )
            meeting = set()
            for j in jobs:
                envs = _envs(c.client, j.id)
                assert {e["SCHEDULERD_NODE_RANK"] for e in envs} == {"0", "1"}
                assert len({(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs}) == 1, envs
                addr, port = envs[0]["MASTER_ADDR"], envs[0]["MASTER_PORT"]
                assert addr == "127.0.0.1" and 29400 <= int(port) <= 29999, envs
                meeting.add((addr, port))
            assert len(meeting) == 2, meeting
    finally:
        for node in nodes:
            remove_agent_cgroups(node)


# --- the units, as systemd would read them ----------------------------------------------------


def _settings(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_agent_unit_binds_no_job_by_its_own_sandboxing() -> None:
    """Jobs are the agent's children: whatever confines the agent confines every job
    (no setuid, a read-only /, a private /tmp, no devices: no GPUs). And an OOM kill of a
    job must not stop the agent (OOMPolicy stays `continue`, the default with Delegate)."""
    s = _settings("schedulerd-agent.service")
    for key in (
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "DevicePolicy",
        "DeviceAllow",
        "CapabilityBoundingSet",
        "SystemCallFilter",
        "RestrictSUIDSGID",
        "MemoryDenyWriteExecute",
        "PrivateUsers",
        "User",
        "DynamicUser",
        "RestrictNamespaces",
        "ProtectKernelTunables",
        "PrivateNetwork",
        "IPAddressDeny",
        "MemoryMax",
        "OOMPolicy",
    ):
        assert key not in s or (key == "OOMPolicy" and s[key] == ["continue"]), (key, s[key])
    assert s["KillMode"] == ["process"] and s["Delegate"] == ["yes"]
    assert s["NotifyAccess"] == ["main"]  # a job cannot say READY/WATCHDOG for the agent


def test_the_daemon_unit_lets_it_find_local_callers_and_write_only_its_state() -> None:
    s = _settings("schedulerd.service")
    families = s["RestrictAddressFamilies"][0].split()
    # sock_diag for a loopback caller's uid; AF_UNIX for sd_notify and unix: listeners.
    assert {"AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert "PrivateNetwork" not in s  # the uid of a loopback caller is the host's
    assert s["User"] == ["schedulerd"] and s["NotifyAccess"] == ["main"]
    assert s["ProtectSystem"] == ["strict"] and s["StateDirectory"] == ["schedulerd"]
    # The sample config's store lies in the unit's writable StateDirectory.
    sample = tomllib.loads((REPO / "deploy" / "config" / "schedulerd.toml").read_text())
    assert Path(sample["db"]).parent == Path("/var/lib/schedulerd")
    # Its watchdog is well above the loop's idle turn (tick 1 s by default).
    assert int(s["WatchdogSec"][0]) >= 10


def test_an_agent_pool_that_is_not_a_name_is_refused(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.toml", "node = 'n1'\npool = 'a b'\n")
    out = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(first), "--print-config"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "'a b'" in out.stderr and "pool" in out.stderr
