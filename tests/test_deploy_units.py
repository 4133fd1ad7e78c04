"""The systemd units of deploy/systemd pass `systemd-analyze verify` (systemd 252 here;
.ci/run installs the Debian package where it is missing) and keep the choices the
deployment relies on (docs/deploy.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
NAMES = ["schedulerd.service", "schedulerd-agent.service"]


def _installed_copy(name: str, into: Path) -> Path:
    """The unit as installed: ExecStart names /opt/schedulerd/bin, which `verify` wants
    to exist; here that is this venv's bin."""
    venv_bin = str(Path(sys.executable).parent)
    text = (UNITS / name).read_text().replace("/opt/schedulerd/bin", venv_bin)
    path = into / name
    path.write_text(text)
    return path


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: install the Debian package `systemd` (.ci/run does)"
    return found


@pytest.mark.parametrize("name", NAMES)
def test_systemd_analyze_verify_accepts_the_unit(name: str, tmp_path: Path) -> None:
    unit = _installed_copy(name, tmp_path)
    done = subprocess.run(
        [_analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    # It exits 0 on unknown keys but says so on stderr (FIELD-NOTES): both must be clean.
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr


def _directives(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z]+)=(.*)", line.strip())
        if m:
            found.setdefault(m.group(1), []).append(m.group(2))
    return found


def test_the_daemon_unit_is_notify_watched_reloadable_and_not_root() -> None:
    d = _directives("schedulerd.service")
    assert d["Type"] == ["notify"]
    assert int(d["WatchdogSec"][0]) > 0
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["User"] != ["root"] and d["User"]
    assert d["StateDirectory"] == ["schedulerd"]
    assert "--config /etc/schedulerd/schedulerd.toml" in d["ExecStart"][0]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert hardening in d


def test_the_agent_unit_leaves_jobs_running_across_a_restart() -> None:
    d = _directives("schedulerd-agent.service")
    assert d["Type"] == ["notify"]
    assert int(d["WatchdogSec"][0]) > 0
    # Only the agent's process is signalled on stop/restart; its jobs' cgroups are below
    # the unit's, delegated to it, and adopted by the next agent.
    assert d["KillMode"] == ["process"]
    assert d["Delegate"] == ["yes"]
    assert "User" not in d  # root: it starts jobs as their users
    assert "--config /etc/schedulerd/agent.toml" in d["ExecStart"][0]


def test_the_daemon_unit_is_hardened(tmp_path: Path) -> None:
    unit = _installed_copy("schedulerd.service", tmp_path)
    done = subprocess.run(
        [_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert m, done.stdout[-2000:] + done.stderr
    # systemd's scale: 0 (locked down) to 10 (fully exposed); "OK" is below 4.5.
    assert float(m.group(1)) < 4.5, done.stdout[-2000:]
