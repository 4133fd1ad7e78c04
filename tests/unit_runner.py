"""Run our systemd unit files the way systemd would, on a machine where systemd is not
PID 1 (FIELD-NOTES: "systemd without systemd"), for the directives our units use.

A `Machine` stands for one host: a folder standing for its `/` (`root`), the network it
enters (a command prefix such as `nsenter --net=...`, see tests/netns.py), and the units
installed under `root/etc/systemd/system`. `Machine.systemctl("enable", "--now", "x")`
works as on a real host; each unit is run by a `Unit`.

Paths. Units and config files name absolute paths of a real host (`/etc/schedulerd`,
`/var/lib/...`, `/run/schedulerd`, `/opt/schedulerd/bin`). `PathMap.map_text` rewrites,
textually, every path that starts with `/etc`, `/var`, `/run` or `/root` into the same
path under `root`, and `/opt/schedulerd` into the installation given (shared by the
hosts, as over NFS; `install_schedulerd` makes one of launchers of this checkout's
programs, runnable by any user). Other paths (`/bin/kill`, `/usr/bin/...`, `/tmp`,
`/home`) are this machine's. A path counts only at the start of a word (after a space,
quote, `=`, `:`, `(` or a redirection), so a path already under `root` is never mapped
twice. Config files (`root/etc/schedulerd/*.toml`) are mapped in place before each start
and reload: they may have been copied there as they are (`Machine.map_files`).

`Machine.shell` runs a script on the host as a deployment guide's shell would, its paths
mapped, with `systemctl` in it served by the Machine (see `systemctl` for the verbs).

What is emulated, from the [Service] section:
- ExecStart= (one command) and ExecReload=: split like a shell line (shlex), `$VAR` and
  `${VAR}` replaced from the unit's environment plus `$MAINPID`; the `-` prefix of
  ExecReload (failure ignored). The program is the main process itself (no fork in
  between: sh, nsenter and setpriv each exec the next), so its pid is $MAINPID.
- User=/Group= (names may be mapped to throwaway users: `names`), with the user's
  supplementary groups (setpriv --init-groups), and HOME, USER, LOGNAME, SHELL set as
  systemd sets them; UMask=; LimitNOFILE= (ulimit -n; where this machine's hard limit is
  lower and may not be raised, without CAP_SYS_RESOURCE, that limit); NoNewPrivileges=yes
  and an empty CapabilityBoundingSet= (setpriv); Environment=; WorkingDirectory= (default
  `/`).
  The environment is otherwise systemd's clean one: PATH and what is listed here.
- StateDirectory=, RuntimeDirectory=, ConfigurationDirectory=, CacheDirectory=,
  LogsDirectory= with their *Mode= (default 0755): made under `root` with 0755 parents,
  owned by User=/Group= (except ConfigurationDirectory, root's, as systemd does), the
  mode set at each start; $STATE_DIRECTORY & co. in the environment.
  RuntimeDirectoryPreserve=: the runtime directory is removed at stop unless `yes`
  (`restart`: kept across a restart only).
- Type=notify (or simple): an AF_UNIX datagram socket, bound under `root/run/systemd`,
  is $NOTIFY_SOCKET; $WATCHDOG_USEC comes from WatchdogSec=. A start waits for READY=1
  and fails with the log's tail when the process exits first or after TimeoutStartSec=
  (capped by the test's `start_timeout_s`). NotifyAccess=main|all|none is enforced with
  the sender's pid (SO_PASSCRED). Every message is kept: READY, the last STATUS, the
  count of WATCHDOG pings, RELOADING, STOPPING.
- A cgroup per unit, as systemd makes one per service: `<cgroup2 mount>/<this process's
  cgroup>/sdunit-<pid>-<hex>/<unit>.service`; the main process joins it before it execs
  (and ExecReload's process too). Delegate=yes: a non-root User= gets the cgroup's files
  (a root one needs nothing). Without a writable cgroup2 the unit's process group stands
  for its cgroup (a process that calls setsid escapes it; said in `cgroup_kind`).
- Stop per KillMode= with KillSignal= (default SIGTERM) and TimeoutStopSec= (capped by
  `stop_timeout_s`): `control-group` signals every process of the cgroup, then SIGKILLs
  what is left at the timeout; `mixed` signals the main process, and SIGKILLs the rest
  of the cgroup once it has exited (or at the timeout); `process` signals the main
  process only, SIGKILLs only it at the timeout, and leaves the others where they are
  (in the cgroup, which outlives the stop: the next start joins it, as with systemd);
  `none` signals nothing. `restart` = stop + start; `reload` runs ExecReload and waits.
- stdout and stderr go to one log file per unit (the journal), appended across starts.

What is NOT emulated (and what that means for a test): Restart= and RestartSec= (a main
process that dies stays dead: `Unit.exited()` says so, and the test checks it); the
watchdog's enforcement (pings are counted, a missing one kills nothing;
`watchdog_overdue()` tells); WATCHDOG_PID (the pid is not known before the fork; our
programs treat its absence as "me"); the sandboxing directives (ProtectSystem=,
ProtectHome=, PrivateTmp=, PrivateDevices=, Protect*=, Restrict*=, LockPersonality=,
SystemCallArchitectures=): they need mount namespaces and seccomp, so a program that
writes outside its StateDirectory or needs /tmp private is not caught; TasksMax= (no pids
controller is enabled); the [Unit] and [Install] sections (ordering, dependencies,
enablement: `enable` only starts with `--now`). Any other [Service] directive fails the
start (`UnsupportedDirective`), so a directive added to a unit is either emulated here or
listed as ignored on purpose, never silently skipped.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The directives of [Service] we emulate (above), and those we ignore on purpose.
EMULATED = {
    "Type", "NotifyAccess", "ExecStart", "ExecReload", "WatchdogSec", "TimeoutStartSec",
    "TimeoutStopSec", "TimeoutSec", "KillMode", "KillSignal", "User", "Group", "UMask",
    "LimitNOFILE", "NoNewPrivileges", "CapabilityBoundingSet", "Environment",
    "WorkingDirectory", "StateDirectory", "StateDirectoryMode", "RuntimeDirectory",
    "RuntimeDirectoryMode", "RuntimeDirectoryPreserve", "ConfigurationDirectory",
    "ConfigurationDirectoryMode", "CacheDirectory", "CacheDirectoryMode", "LogsDirectory",
    "LogsDirectoryMode", "Delegate",
}  # fmt: skip
IGNORED = {
    "Restart", "RestartSec", "TasksMax", "ProtectSystem", "ProtectHome", "PrivateTmp",
    "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc",
    "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
    "SystemCallArchitectures", "RestrictAddressFamilies",
}  # fmt: skip

SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# `systemctl` in a Machine.shell script: one line, so that the script's line numbers in
# bash's errors are off by one only.
SYSTEMCTL_FUNCTION = (
    'systemctl() { printf "%s\\n" "$*" > "$UNIT_RUNNER_REQUEST"; local rc; '
    '{ IFS= read -r rc; cat; } < "$UNIT_RUNNER_REPLY"; return "$rc"; }\n'
)
_STOP = "\0stop\0"
# The folders of a fresh host's root (a Machine's), with their modes.
SKELETON = [
    ("etc/systemd/system", 0o755),
    ("lib/systemd/system", 0o755),
    ("var/lib", 0o755),
    ("var/log", 0o755),
    ("var/cache", 0o755),
    ("var/backups", 0o755),
    ("run", 0o755),
    ("root", 0o700),
]
DEFAULT_TIMEOUT_S = 90.0  # systemd's DefaultTimeoutStartSec / DefaultTimeoutStopSec
_DIRS = {  # directive -> (where under root, owned by the unit's user)
    "StateDirectory": ("var/lib", True),
    "RuntimeDirectory": ("run", True),
    "ConfigurationDirectory": ("etc", False),
    "CacheDirectory": ("var/cache", True),
    "LogsDirectory": ("var/log", True),
}
_ENV_OF_DIR = {
    "StateDirectory": "STATE_DIRECTORY",
    "RuntimeDirectory": "RUNTIME_DIRECTORY",
    "ConfigurationDirectory": "CONFIGURATION_DIRECTORY",
    "CacheDirectory": "CACHE_DIRECTORY",
    "LogsDirectory": "LOGS_DIRECTORY",
}


class UnitError(RuntimeError):
    """A unit failed to start, stop or reload; the message holds its log's tail. `rc` is
    what systemctl would exit with."""

    def __init__(self, message: str, rc: int = 1) -> None:
        super().__init__(message)
        self.rc = rc


class UnsupportedDirective(UnitError):
    pass


# ---------------------------------------------------------------------------- paths


class PathMap:
    """A host's absolute paths onto this machine: `/etc/...`, `/var/...`, `/run/...` and
    root's home `/root/...` under `root`; `/opt/schedulerd` onto `install`."""

    PREFIXES = ("/opt/schedulerd", "/etc", "/var", "/run", "/root")
    # A path starts a word: at the start of the text or after a space, quote, = : ( < >.
    _PATH = re.compile(r"(?<![^\s\"'=:(<>])(" + "|".join(PREFIXES) + r")(?=[/\s\"';:,)<>]|$)")

    def __init__(self, root: Path, install: Path) -> None:
        self.root = root
        self.install = install

    def _replace(self, m: re.Match[str]) -> str:
        prefix = m.group(1)
        if prefix == "/opt/schedulerd":
            return str(self.install)
        return str(self.root) + prefix

    def map_text(self, text: str) -> str:
        return self._PATH.sub(self._replace, text)

    def map_path(self, path: str) -> Path:
        mapped = self.map_text(path)
        if mapped == path:
            raise ValueError(f"{path!r} is not a path this map moves")
        return Path(mapped)


def install_schedulerd(dest: Path) -> Path:
    """`dest` made into what /opt/schedulerd is on a real host, a Python environment with
    this checkout's programs, usable by every user; returns `dest`.

    The venv of this checkout cannot be used as is by other users: its interpreter lives
    under /root (0700). The same Python minor version installed for everyone
    (/usr/bin/python3) runs the same code: each launcher in `dest/bin` starts it isolated
    (-IS: neither the system's dist-packages nor a user's site, which could shadow the
    venv's packages) and adds the venv's site-packages (with its .pth files, among them
    the editable install of this checkout). Where the venv's interpreter is usable by
    others, it is used directly."""
    venv_python = Path(sys.executable)
    system_python = Path("/usr/bin/python3")
    if _world_executable(venv_python):
        python = venv_python
    elif system_python.exists() and _minor_version(system_python) == sys.version_info[:2]:
        python = system_python
    else:
        raise UnitError(
            f"no Python {sys.version_info[0]}.{sys.version_info[1]} usable by every user: "
            f"{venv_python} is private and {system_python} is another version"
        )
    site_packages = sysconfig.get_paths()["purelib"]
    bin_dir = dest / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for parent in [dest, *dest.parents]:  # every user must reach it
        if parent == Path("/"):
            break
        if not parent.stat().st_mode & 0o001:
            raise UnitError(f"{parent} is not searchable by other users: put {dest} elsewhere")
    scripts = [
        ep
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.dist is not None and ep.dist.name == "schedulerd"
    ]
    if not scripts:
        raise UnitError("schedulerd's console scripts are not installed in this venv")
    for ep in scripts:
        path = bin_dir / ep.name
        path.write_text(
            f"#!{python} -IS\n"
            "# A launcher made by tests/unit_runner.py (install_schedulerd).\n"
            "import site\n"
            "import sys\n\n"
            f"site.addsitedir({site_packages!r})\n"
            f"from {ep.module} import {ep.attr}\n\n"
            f"sys.argv[0] = {ep.name!r}\n"
            f"sys.exit({ep.attr}())\n"
        )
        path.chmod(0o755)
    # `schedctl` itself is a script (scripts/schedctl: bash, then schedctl-py beside it),
    # installed by pip as it is.
    script = Path(__file__).resolve().parent.parent / "scripts" / "schedctl"
    if script.exists() and (bin_dir / "schedctl-py").exists():
        shutil.copy(script, bin_dir / "schedctl")
        (bin_dir / "schedctl").chmod(0o755)
    return dest


def _world_executable(path: Path) -> bool:
    real = path.resolve()
    for p in [real, *real.parents]:
        mode = p.stat().st_mode
        if not mode & 0o001:
            return False
    return True


def _minor_version(python: Path) -> tuple[int, int]:
    out = subprocess.run(
        [str(python), "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


# ---------------------------------------------------------------------------- unit files


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values, in systemd's syntax: `#`/`;` comments, a trailing `\\`
    continues a line, a key may repeat (an empty value clears what came before)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines, "").strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise UnitError(f"not a unit file line: {raw!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        if value == "":
            current[key] = []
        else:
            current.setdefault(key, []).append(value)
    return sections


_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hr": 3600}


def parse_timespan(value: str) -> float:
    """systemd's time spans: `30`, `30s`, `2min`, `1min 30s`, `500ms`; `infinity`."""
    value = value.strip()
    if value == "infinity":
        return float("inf")
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", value):
        if unit not in _UNITS_S:
            raise UnitError(f"time span {value!r}: unknown unit {unit!r}")
        total += float(number) * _UNITS_S[unit]
    return total


def _bool(value: str) -> bool:
    return value.lower() in ("1", "yes", "true", "on")


def _substitute(word: str, env: Mapping[str, str]) -> str:
    """systemd's $VAR and ${VAR} in a command line (an unknown one is empty)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), word)


# ---------------------------------------------------------------------------- notify


@dataclass
class Notifications:
    """What a unit said on $NOTIFY_SOCKET (only messages NotifyAccess= lets through)."""

    messages: list[tuple[float, int, dict[str, str]]] = field(default_factory=list)
    ignored: list[tuple[int, str]] = field(default_factory=list)  # (pid, text)
    ready: int = 0  # READY=1 messages so far
    reloading: int = 0
    stopping: int = 0
    watchdog: int = 0
    last_watchdog: float = 0.0  # time.monotonic()
    status: str = ""  # the last STATUS=
    statuses: list[str] = field(default_factory=list)


class NotifySocket:
    """$NOTIFY_SOCKET: a datagram socket read by a thread; `access(pid)` says whether a
    sender's message counts (NotifyAccess=)."""

    def __init__(self, path: Path, access: Callable[[int], bool]) -> None:
        self.path = path
        self.access = access
        self.state = Notifications()
        self.changed = threading.Condition()
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(str(path))
        # Any user may send, as with systemd's /run/systemd/notify: the unit's user must.
        path.chmod(0o666)
        self._sock.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._read, name=f"notify {path}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        ucred = struct.Struct("iII")
        while not self._closed:
            try:
                data, ancdata, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(ucred.size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = ucred.unpack(payload[: ucred.size])[0]
            text = data.decode(errors="replace")
            with self.changed:
                if not self.access(pid):
                    self.state.ignored.append((pid, text))
                    continue
                fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
                self._record(pid, fields)
                self.changed.notify_all()

    def _record(self, pid: int, fields: dict[str, str]) -> None:
        s = self.state
        now = time.monotonic()
        s.messages.append((now, pid, fields))
        if fields.get("READY") == "1":
            s.ready += 1
        if fields.get("RELOADING") == "1":
            s.reloading += 1
        if fields.get("STOPPING") == "1":
            s.stopping += 1
        if fields.get("WATCHDOG") == "1":
            s.watchdog += 1
            s.last_watchdog = now
        if "STATUS" in fields:
            s.status = fields["STATUS"]
            s.statuses.append(s.status)

    def wait(self, what: Callable[[Notifications], bool], timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: what(self.state), timeout_s)

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# ---------------------------------------------------------------------------- cgroups


def _cgroup2_parent() -> Path | None:
    """Where units' cgroups go: below this process's own cgroup in the v2 hierarchy, if
    that is mounted and writable; None otherwise."""
    mount = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                mount = fields[1].encode().decode("unicode_escape")
                break
    if mount is None:
        return None
    own = "/"
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if hid == "0" and not controllers:
                own = path
    parent = Path(mount) / own.lstrip("/")
    return parent if os.access(parent, os.W_OK) else None


def _cgroup_pids(cgroup: Path) -> list[int]:
    pids: list[int] = []
    for top, _, _ in os.walk(cgroup):
        with contextlib.suppress(FileNotFoundError):
            pids += [int(p) for p in Path(top, "cgroup.procs").read_text().split()]
    return pids


def _remove_cgroup(cgroup: Path, timeout_s: float = 10.0) -> None:
    """Kill everything in `cgroup` and below, and rmdir the tree, bottom up."""
    if not cgroup.exists():
        return
    kill = cgroup / "cgroup.kill"
    deadline = time.monotonic() + timeout_s
    while _cgroup_pids(cgroup):
        if kill.exists():
            kill.write_text("1")
        else:  # before Linux 5.14
            for pid in _cgroup_pids(cgroup):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise UnitError(f"processes {_cgroup_pids(cgroup)} of {cgroup} do not die")
        time.sleep(0.05)
    dirs = sorted((top for top, _, _ in os.walk(cgroup)), key=lambda p: -p.count("/"))
    for d in dirs:
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY until the last exit is accounted
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


# ---------------------------------------------------------------------------- a unit


class Unit:
    """One service unit of a Machine: start, stop, restart, reload (see the module's
    docstring for what is emulated)."""

    def __init__(self, machine: Machine, path: Path) -> None:
        self.machine = machine
        self.name = path.name if path.name.endswith(".service") else path.name + ".service"
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = machine.root / "var/log/units" / f"{self.name}.log"
        self.cgroup: Path | None = None
        self.cgroup_kind = ""  # "cgroup2" or "process group", once started
        self.notify: NotifySocket | None = None
        self.starts = 0
        self.exit_codes: list[int] = []  # of main processes that ended, in order
        self.sessions: set[int] = set()  # of its main processes (each a session leader)
        self.service: dict[str, list[str]] = {}
        self.sections: dict[str, dict[str, list[str]]] = {}

    # -- reading the unit

    def load(self) -> None:
        """Read (again) the unit file, paths mapped, and refuse what is not emulated."""
        text = self.machine.paths.map_text(self.path.read_text())
        self.sections = parse_unit(text)
        self.service = self.sections.get("Service", {})
        unknown = sorted(set(self.service) - EMULATED - IGNORED)
        if unknown:
            raise UnsupportedDirective(
                f"{self.path}: [Service] {', '.join(unknown)}: not emulated by "
                "tests/unit_runner.py (emulate it there, or list it in IGNORED with why)"
            )
        if len(self.service.get("ExecStart", [])) != 1:
            raise UnitError(f"{self.path}: one ExecStart= expected")
        kind = self.get("Type", "simple")
        if kind not in ("simple", "exec", "notify"):
            raise UnsupportedDirective(f"{self.path}: Type={kind} is not emulated")

    def get(self, key: str, default: str = "") -> str:
        values = self.service.get(key, [])
        return values[-1] if values else default

    def _timeout(self, key: str, cap: float) -> float:
        value = self.get(key) or self.get("TimeoutSec")
        return min(parse_timespan(value) if value else DEFAULT_TIMEOUT_S, cap)

    @property
    def user(self) -> str:
        name = self.get("User", "root")
        return self.machine.names.get(name, name)

    @property
    def group(self) -> str:
        name = self.get("Group")
        if not name:
            return str(pwd.getpwnam(self.user).pw_gid)
        return self.machine.names.get(name, name)

    def _ids(self) -> tuple[int, int]:
        entry = pwd.getpwnam(self.user)
        group = self.group
        gid = int(group) if group.isdigit() else _gid(group)
        return entry.pw_uid, gid

    # -- state

    @property
    def main_pid(self) -> int:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else 0

    def active(self) -> bool:
        return self.main_pid != 0

    def exited(self) -> int | None:
        """The exit code of a main process that ended without a stop (a crash: with no
        Restart= emulated, the unit stays down), else None."""
        return self.proc.poll() if self.proc is not None else None

    @property
    def notifications(self) -> Notifications:
        assert self.notify is not None, f"{self.name} was never started"
        return self.notify.state

    def watchdog_overdue(self) -> bool:
        sec = self.get("WatchdogSec")
        if not sec or self.notify is None or not self.active():
            return False
        last = self.notify.state.last_watchdog
        return last > 0 and time.monotonic() - last > parse_timespan(sec)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status_text(self) -> str:
        """What `systemctl status` shows first: the state, the main pid, the last STATUS=
        and the log's tail (the journal's)."""
        if not self.sections:
            self.load()
        description = (self.sections.get("Unit", {}).get("Description") or [""])[-1]
        state = "active (running)" if self.active() else "inactive (dead)"
        lines = [
            f"* {self.name} - {description}",
            f"     Loaded: loaded ({self.path})",
            f"     Active: {state}",
        ]
        if self.active():
            lines.append(f"   Main PID: {self.main_pid}")
        if self.notify is not None and self.notify.state.status:
            lines.append(f'     Status: "{self.notify.state.status}"')
        if self.cgroup is not None:
            lines.append(f"     CGroup: {self.cgroup}")
        return "\n".join([*lines, "", self.log_tail(10)])

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- start

    def start(self) -> None:
        if self.active():
            return  # as `systemctl start` of a running unit
        self.load()
        uid, gid = self._ids()
        env = self._environment(uid)
        self._make_directories(uid, gid, env)
        self._make_cgroup(uid, gid)
        if self.notify is None:
            self.notify = NotifySocket(
                self.machine.root / "run/systemd/notify" / self.name, self._may_notify
            )
        assert self.notify is not None
        env["NOTIFY_SOCKET"] = str(self.notify.path)
        if self.get("WatchdogSec"):
            env["WATCHDOG_USEC"] = str(int(parse_timespan(self.get("WatchdogSec")) * 1e6))
        argv = self._command(self.get("ExecStart"), env)
        ready_before = self.notify.state.ready
        self.proc = self._spawn(argv, env, uid, gid)
        self.sessions.add(self.proc.pid)
        self.starts += 1
        if self.get("Type", "simple") != "notify":
            return
        timeout = self._timeout("TimeoutStartSec", self.machine.start_timeout_s)

        def ready_or_dead(s: Notifications) -> bool:
            return s.ready > ready_before or (
                self.proc is not None and self.proc.poll() is not None
            )

        deadline = time.monotonic() + timeout
        # Woken by each message; an exit sends none, hence the short waits.
        while not self.notify.wait(ready_or_dead, 0.1) and time.monotonic() < deadline:
            pass
        if self.notify.state.ready > ready_before:
            return
        code = self.proc.poll()
        if code is None:
            self._kill_all()
            why = f"no READY=1 within {timeout:g} s"
        else:
            why = f"the main process exited with {code} before READY=1"
        raise UnitError(f"{self.machine.name}: {self.name}: {why}; log:\n{self.log_tail()}")

    def _may_notify(self, pid: int) -> bool:
        access = self.get("NotifyAccess", "main")
        if access == "all":
            return True
        if access == "none":
            return False
        return pid != 0 and pid == self.main_pid

    def _environment(self, uid: int) -> dict[str, str]:
        env = {"PATH": SERVICE_PATH, "INVOCATION_ID": secrets.token_hex(16)}
        if self.get("User"):
            entry = pwd.getpwuid(uid)
            env |= {
                "HOME": entry.pw_dir,
                "USER": entry.pw_name,
                "LOGNAME": entry.pw_name,
                "SHELL": entry.pw_shell or "/bin/sh",
            }
        for assignment in self.service.get("Environment", []):
            for word in shlex.split(assignment):
                key, _, value = word.partition("=")
                env[key] = value
        return env

    def _make_directories(self, uid: int, gid: int, env: dict[str, str]) -> None:
        for directive, (under, owned) in _DIRS.items():
            names = [n for v in self.service.get(directive, []) for n in v.split()]
            if not names:
                continue
            mode = int(self.get(directive + "Mode", "0755"), 8)
            paths = []
            for name in names:
                path = self.machine.root / under / name
                for parent in reversed(path.relative_to(self.machine.root).parents):
                    p = self.machine.root / parent
                    if not p.exists():
                        p.mkdir(mode=0o755)
                path.mkdir(exist_ok=True)
                path.chmod(mode)
                if owned:
                    os.chown(path, uid, gid)
                paths.append(str(path))
            env[_ENV_OF_DIR[directive]] = ":".join(paths)

    def _make_cgroup(self, uid: int, gid: int) -> None:
        if self.cgroup is not None and self.cgroup.exists():
            return  # kept from a previous start (KillMode=process leftovers live there)
        parent = self.machine.cgroup_parent()
        if parent is None:
            self.cgroup_kind = "process group"
            return
        self.cgroup = parent / self.name
        self.cgroup.mkdir(exist_ok=True)
        self.cgroup_kind = "cgroup2"
        if _bool(self.get("Delegate", "no")) and uid != 0:
            # What systemd hands a non-root service that manages its own subtree.
            for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
                os.chown(self.cgroup / name if name else self.cgroup, uid, gid)

    def _command(self, line: str, env: Mapping[str, str]) -> list[str]:
        words = shlex.split(line)
        if words and words[0][:1] in "-@:+!":
            if words[0][0] != "-":
                raise UnsupportedDirective(f"{self.name}: prefix {words[0][0]!r} of {line!r}")
            words[0] = words[0][1:]
        return [_substitute(w, env) for w in words]

    def _spawn(
        self, argv: Sequence[str], env: Mapping[str, str], uid: int, gid: int
    ) -> subprocess.Popen[bytes]:
        """sh (as root: join the cgroup, raise the file limit) execs nsenter (the host's
        network), which execs setpriv (the unit's user), which execs the program."""
        procs = str(self.cgroup / "cgroup.procs") if self.cgroup is not None else ""
        nofile = self.get("LimitNOFILE")
        nofile = "unlimited" if nofile == "infinity" else nofile.split(":")[-1]
        priv: list[str] = []
        if uid != 0 or gid != 0:
            priv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups"]
        if _bool(self.get("NoNewPrivileges", "no")):
            priv = [*(priv or ["setpriv"]), "--no-new-privs"]
        if "CapabilityBoundingSet" in self.service and not self.service["CapabilityBoundingSet"]:
            priv = [*(priv or ["setpriv"]), "--bounding-set=-all"]
        script = (
            'if [ -n "$1" ]; then echo 0 > "$1" || exit 126; fi; '
            # Above the hard limit only with CAP_SYS_RESOURCE: without it, the hard limit.
            'if [ -n "$2" ]; then ulimit -n "$2" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; fi; '
            'shift 2; exec "$@"'
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        umask = int(self.get("UMask", "0022"), 8)
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                ["/bin/sh", "-c", script, "unit-start", procs, nofile, *self.machine.enter]
                + ([*priv, "--"] if priv else [])
                + list(argv),
                env=dict(env),
                cwd=self.get("WorkingDirectory", "/"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                umask=umask,
                start_new_session=True,  # systemd makes each service a session leader
            )

    # -- stop

    def stop(self, restarting: bool = False) -> None:
        if self.proc is None:
            return
        proc = self.proc
        mode = self.get("KillMode", "control-group")
        if mode not in ("control-group", "mixed", "process", "none"):
            raise UnsupportedDirective(f"{self.name}: KillMode={mode}")
        sig = _signal(self.get("KillSignal", "SIGTERM"))
        timeout = self._timeout("TimeoutStopSec", self.machine.stop_timeout_s)
        deadline = time.monotonic() + timeout
        if mode == "control-group":
            self._signal_all(sig)  # the main process too, and the rest if it died before
        elif mode in ("mixed", "process"):
            self._signal_main(sig)
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            if mode == "process":
                self._signal_main(signal.SIGKILL)
            else:
                self._signal_all(signal.SIGKILL)
        self.exit_codes.append(proc.wait(10))
        self.proc = None
        if mode == "control-group":  # the rest get until the timeout, then SIGKILL
            while self._pids() and time.monotonic() < deadline:
                time.sleep(0.05)
        if mode in ("control-group", "mixed"):
            self._signal_all(signal.SIGKILL)
            # They take a moment to leave the cgroup.
            deadline = time.monotonic() + 10
            while self._pids() and time.monotonic() < deadline:
                time.sleep(0.02)
        # KillMode=process (and none) leave the other processes where they are, on purpose.
        preserve = self.get("RuntimeDirectoryPreserve", "no")
        if not (_bool(preserve) or (preserve == "restart" and restarting)):
            self._remove_runtime_directories()

    def _remove_runtime_directories(self) -> None:
        for name in (n for v in self.service.get("RuntimeDirectory", []) for n in v.split()):
            shutil.rmtree(self.machine.root / "run" / name, ignore_errors=True)

    def restart(self) -> None:
        self.stop(restarting=True)
        self.start()

    def reload(self) -> None:
        if not self.active():
            raise UnitError(f"{self.name} is not active: nothing to reload")
        lines = self.service.get("ExecReload", [])
        if not lines:
            raise UnitError(f"{self.name}: no ExecReload=")
        uid, gid = self._ids()
        env = self._environment(uid) | {"MAINPID": str(self.main_pid)}
        timeout = self._timeout("TimeoutStartSec", self.machine.start_timeout_s)
        for line in lines:
            ignore = line.startswith("-")
            proc = self._spawn(self._command(line, env), env, uid, gid)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired as e:
                proc.kill()
                proc.wait()
                raise UnitError(f"{self.name}: ExecReload {line!r} ran past {timeout:g} s") from e
            if code != 0 and not ignore:
                raise UnitError(f"{self.name}: ExecReload {line!r} exited {code}")

    # -- processes

    def _pids(self) -> list[int]:
        if self.cgroup is not None:
            return _cgroup_pids(self.cgroup)
        # Without a cgroup, the sessions of its main processes stand for it.
        return [p for p in _all_pids() if _sid(p) in self.sessions]

    def _signal_main(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def _signal_all(self, sig: int) -> None:
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                if sig != signal.SIGKILL:
                    os.kill(pid, signal.SIGCONT)  # as systemd: a stopped process must see it

    def _kill_all(self) -> None:
        self._signal_all(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.exit_codes.append(self.proc.wait())
            self.proc = None

    def close(self) -> None:
        """The test is over: stop it, kill whatever is left in its cgroup (KillMode=process
        leftovers too), remove the cgroup and the notify socket. Never raises for a unit
        that is already down."""
        try:
            if self.active():
                self.stop()
        finally:
            try:
                self._kill_all()
                if self.cgroup is not None:
                    _remove_cgroup(self.cgroup)
                    self.cgroup = None
            finally:
                if self.notify is not None:
                    self.notify.close()


def _fifo_write(path: Path, text: str, timeout_s: float = 10.0) -> None:
    """Write `text` into a FIFO once its reader has it open; give up after `timeout_s`
    (a reader that is gone, a shell killed meanwhile) rather than wait forever."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:  # ENXIO: no reader yet
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _signal(name: str) -> int:
    return int(getattr(signal, name if name.startswith("SIG") else "SIG" + name))


def _gid(group: str) -> int:
    import grp

    return grp.getgrnam(group).gr_gid


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _sid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[4])
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        return -1


# ---------------------------------------------------------------------------- a machine


class Machine:
    """One host: `root` stands for its `/`, `enter` is the command prefix that puts a
    process in its network (() for this machine's), `install` is its /opt/schedulerd.
    `names` maps user and group names of unit files (User=schedulerd) onto this
    machine's (a throwaway user). Units are looked up in root/etc/systemd/system, then
    root/lib/systemd/system; `install_unit` puts one there."""

    def __init__(
        self,
        name: str,
        root: Path,
        install: Path,
        enter: Sequence[str] = (),
        names: Mapping[str, str] | None = None,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.name = name
        self.root = root
        self.paths = PathMap(root, install)
        self.enter = list(enter)
        self.names = dict(names or {})
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.units: dict[str, Unit] = {}
        self.config_globs = ["etc/schedulerd/*.toml"]
        self._cgroup_parent: Path | None = None
        self._cgroup_tried = False
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        # What every Debian host has, that a guide's commands take for granted.
        for folder, mode in SKELETON:
            path = root / folder
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(mode)

    def cgroup_parent(self) -> Path | None:
        """This machine's folder of unit cgroups (made once), or None without cgroup2."""
        if not self._cgroup_tried:
            self._cgroup_tried = True
            parent = _cgroup2_parent()
            if parent is not None:
                path = parent / f"sdunit-{os.getpid()}-{secrets.token_hex(3)}-{self.name}"
                try:
                    path.mkdir()
                    self._cgroup_parent = path
                except OSError:
                    self._cgroup_parent = None
        return self._cgroup_parent

    def install_unit(self, source: Path, name: str = "") -> Path:
        """Copy a unit file into root/etc/systemd/system, as a package or admin would."""
        dest = self.root / "etc/systemd/system" / (name or source.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        return dest

    def unit(self, name: str) -> Unit:
        name = name if name.endswith(".service") else name + ".service"
        if name not in self.units:
            for folder in ("etc/systemd/system", "lib/systemd/system"):
                path = self.root / folder / name
                if path.exists():
                    self.units[name] = Unit(self, path)
                    break
            else:
                raise UnitError(f"{self.name}: unit {name} not found")
        return self.units[name]

    def map_files(self) -> None:
        """Map the paths in this host's config files in place (`config_globs`, under
        root): a file copied from a repository names the real host's paths."""
        for pattern in self.config_globs:
            for path in self.root.glob(pattern):
                text = path.read_text()
                mapped = self.paths.map_text(text)
                if mapped != text:
                    path.write_text(mapped)

    def systemctl(self, *args: str) -> str:
        """The systemctl verbs a deployment uses: daemon-reload (nothing to do: units
        are read at each start), enable [--now], disable [--now], start, stop, restart,
        try-restart, reload, status, is-active; several units per verb. Returns what
        systemctl prints; raises UnitError (its `rc`: systemctl's exit code) on failure."""
        words = list(args)
        if not words:
            raise UnitError("systemctl: no verb")
        verb, rest = words[0], words[1:]
        now = "--now" in rest
        names = [w for w in rest if not w.startswith("-")]
        if verb == "daemon-reload":
            return ""
        if not names:
            raise UnitError(f"systemctl {verb}: no unit")
        out = []
        for name in names:
            unit = self.unit(name)
            if verb in ("start", "restart", "try-restart", "reload", "enable"):
                self.map_files()
            if verb == "start" or (verb == "enable" and now):
                unit.start()
            elif verb == "enable":
                unit.load()  # enablement itself is not emulated; the unit must be valid
            elif verb == "stop" or (verb == "disable" and now):
                unit.stop()
            elif verb == "disable":
                pass
            elif verb == "restart" or (verb == "try-restart" and unit.active()):
                unit.restart()
            elif verb == "reload":
                unit.reload()
            elif verb in ("status", "is-active"):
                text = (
                    unit.status_text()
                    if verb == "status"
                    else ("active" if unit.active() else "inactive")
                )
                if not unit.active():
                    raise UnitError(text, rc=3)
                out.append(text)
            elif verb != "try-restart":
                raise UnitError(f"systemctl {verb}: not emulated")
        return "\n".join(out)

    def shell(
        self,
        script: str,
        env: Mapping[str, str],
        cwd: Path,
        user: str = "",
        timeout_s: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """`bash -euo pipefail -c script` on this host (its network), as root or `user`
        (runuser), the script's paths mapped; `systemctl` in it is this Machine's (a
        shell function that asks this process over a pair of FIFOs, so the whole script
        is one shell: variables set before a systemctl line are there after it)."""
        with tempfile.TemporaryDirectory(prefix="sdunit-ctl-") as tmp:
            request, reply = Path(tmp, "request"), Path(tmp, "reply")
            os.mkfifo(request, 0o600)
            os.mkfifo(reply, 0o600)
            server = threading.Thread(
                target=self._serve_systemctl, args=(request, reply), daemon=True
            )
            server.start()
            argv = [
                "bash",
                "-euo",
                "pipefail",
                "-c",
                SYSTEMCTL_FUNCTION + self.paths.map_text(script),
            ]
            if user:
                argv = [shutil.which("runuser") or "runuser", "-u", user, "--", *argv]
            try:
                return subprocess.run(
                    [*self.enter, *argv],
                    env={
                        **env,
                        "UNIT_RUNNER_REQUEST": str(request),
                        "UNIT_RUNNER_REPLY": str(reply),
                    },
                    cwd=cwd,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                    check=False,
                )
            finally:
                if server.is_alive():  # its last request: stop
                    _fifo_write(request, _STOP)
                server.join(timeout_s)

    def _serve_systemctl(self, request: Path, reply: Path) -> None:
        while True:
            with open(request) as f:  # waits for the shell's (or the stop) request
                line = f.read()
            if line == _STOP:
                return
            try:
                rc, out = 0, self.systemctl(*shlex.split(line))
            except UnitError as e:
                rc, out = e.rc, str(e)
            except Exception as e:  # the shell must get an answer whatever happens
                rc, out = 1, f"unit_runner: {e!r}"
            _fifo_write(reply, f"{rc}\n{out}\n" if out else f"{rc}\n")

    def close(self) -> None:
        """Stop every unit, remove their cgroups; never leaves a process behind."""
        errors = []
        for unit in reversed(list(self.units.values())):
            try:
                unit.close()
            except Exception as e:  # every unit gets its turn
                errors.append(f"{unit.name}: {e}")
        if self._cgroup_parent is not None:
            try:
                _remove_cgroup(self._cgroup_parent)
            except Exception as e:
                errors.append(f"{self._cgroup_parent}: {e}")
        if errors:
            raise UnitError(f"{self.name}: " + "; ".join(errors))

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
