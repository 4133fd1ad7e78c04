"""Time-based plans end to end (issue 13 item 5; docs/policy.md): a real daemon and
agent. `policy apply --dry-run --at` shows the terms and entitlements of two times;
when a window ends on the real clock the daemon switches /high's terms, says so in its
log, and reclaims from the borrower, with nothing else happening.

The window is written from the current time (HH:MM:SS, UTC), so that it ends a few
seconds after it is applied; nothing here asserts how long anything took."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from harness import Cluster, sleep_job, wait_for

from schedulerd.api.v1 import admin_pb2, jobs_pb2
from schedulerd.cli.main import main as schedctl


def clock(t: float) -> str:
    s = int(t) % 86400
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def policy(start: float, end: float) -> str:
    # Inside the window /high owns nothing and takes no surplus; outside it owns all 4.
    # run_as_root: the tests' jobs are root's (tests/harness.py).
    return f"""
version: 1
run_as_root: true
timezone: UTC
consumers:
  low: {{share: 1, grace: 1s}}
  high:
    owned: 4
    windows:
      - when: "daily {clock(start)}-{clock(end)}"
        owned: 0
        share: 0
"""


def statuses(resp: admin_pb2.ApplyPolicyResponse) -> dict[str, tuple[int, float, str]]:
    return {c.path: (c.owned, c.entitlement, c.window) for c in resp.consumers}


def test_a_window_ends_on_the_real_clock_and_the_daemon_reclaims(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    cluster = Cluster(tmp_path, policy(now - 60, now + 3600))
    node = f"win-{os.getpid()}"
    try:
        cluster.start_daemon()
        cluster.start_agent(node, 4)
        cluster.wait_nodes_up(1)
        c = cluster.client

        low = [c.submit("/low", sleep_job(300), gpus=1) for _ in range(4)]
        wait_for(
            "/low to hold every GPU",
            lambda: all(c.get_job(j.id).state == jobs_pb2.RUNNING for j in low),
        )
        high = c.submit("/high", sleep_job(300), gpus=2)
        # In the window /high is entitled to nothing: it waits, and nothing is reclaimed.
        listing = {x.path: x for x in c.consumers().consumers}
        assert listing["/high"].window.startswith("daily ")
        assert listing["/high"].owned == 0
        wait_for("/high's job to have a reason", lambda: c.get_job(high.id).reason != "")
        assert c.get_job(high.id).state == jobs_pb2.PENDING
        assert all(c.get_job(j.id).state == jobs_pb2.RUNNING for j in low)

        # The dry run at two times: in the window and after it.
        now = time.time()
        text = policy(now - 60, now + 5)
        inside = statuses(c.apply_policy(text, "short.yaml", dry_run=True, at=now))
        after = statuses(c.apply_policy(text, "short.yaml", dry_run=True, at=now + 3600))
        assert inside["/high"][0] == 0 and inside["/high"][2].startswith("daily ")
        assert inside["/high"][1] == 0
        assert after["/high"][0] == 4 and after["/high"][2] == ""
        assert after["/high"][1] > 0
        # The CLI too: --at TIME in ISO 8601.
        path = tmp_path / "short.yaml"
        path.write_text(text)
        later = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + 3600))
        at = ["--at", later]
        with pytest.raises(SystemExit) as e:
            schedctl(["--daemon", cluster.address, "policy", "apply", str(path), "--dry-run", *at])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "dry run: nothing applied; as at" in out and "high" in out

        # Applied: the window now ends in a few seconds, on the daemon's own clock.
        c.apply_policy(text, "short.yaml")
        wait_for(
            "/high's job to run after the window ends",
            lambda: c.get_job(high.id).state == jobs_pb2.RUNNING,
            timeout_s=30,
        )
        preempted = [j.id for j in low if c.get_job(j.id).attempt > 0]
        assert len(preempted) >= 2, cluster.log_tail()
        log = (tmp_path / "daemon.log").read_text(errors="replace")
        assert "policy window: /high now owned 4 share 1 (outside its windows)" in log
        listing = {x.path: x for x in c.consumers().consumers}
        assert listing["/high"].window == "" and listing["/high"].owned == 4
    finally:
        cluster.stop()
