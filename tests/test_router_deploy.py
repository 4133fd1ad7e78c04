"""The router's systemd unit passes `systemd-analyze verify` and keeps the choices
docs/router.md relies on; the sample config file is one the program accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "schedulerd-router.service"
CONFIG = ROOT / "deploy" / "config" / "router.toml"


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z]+)=(.*)", line.strip())
        if m:
            found.setdefault(m.group(1), []).append(m.group(2))
    return found


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install the Debian package `systemd`"
    # As installed: ExecStart names /opt/schedulerd/bin, which `verify` wants to exist.
    text = UNIT.read_text().replace("/opt/schedulerd/bin", str(Path(sys.executable).parent))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    # It exits 0 on unknown keys but says so on stderr: both must be clean.
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr


def test_the_unit_is_notify_watched_after_the_daemon_and_not_root() -> None:
    d = _directives()
    assert d["Type"] == ["notify"]
    assert int(d["WatchdogSec"][0]) > 0
    assert "schedulerd.service" in d["After"][0].split()
    assert d["DynamicUser"] == ["yes"] and "User" not in d
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    assert d["CapabilityBoundingSet"] == [""]
    (exec_start,) = d["ExecStart"]
    assert exec_start.endswith("schedulerd-router --config /etc/schedulerd/router.toml")


def test_the_sample_config_is_accepted_and_names_the_units_credential() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "schedulerd.router", "--config", str(CONFIG), "--print-config"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    (credential,) = _directives()["LoadCredential"]
    name = credential.split(":", 1)[0]
    expected = f'token-file = "/run/credentials/{UNIT.name}/{name}"'
    assert any(line.startswith(expected) for line in done.stdout.splitlines()), done.stdout
