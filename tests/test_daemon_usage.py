"""Decayed usage is kept (docs/scheduling.md): the daemon's fairshare order must not
forget who used the GPUs when the daemon restarts, even after a SIGKILL; the daemon
and the simulator compute it with one function (core/usage.py)."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from harness import running_cluster, wait_for

from schedulerd import core
from schedulerd.daemon.state import OUTAGE_CREDIT_S, USAGE_SAVE_S, ClusterState
from schedulerd.store import JobRecord, JobState, PartPhase, PartRecord, Store

POLICY = """
version: 1
usage_half_life: 1h
consumers:
  a: {owned: 2}
"""


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_usage_is_saved_and_loaded_and_counts_jobs_that_ran_meanwhile(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "s.db")
    state = ClusterState(store, clock)
    state.load()
    state.set_policy(core.Policy(consumers={core.ROOT: core.ConsumerPolicy(core.ROOT)}), None)  # type: ignore[arg-type]
    job = JobRecord(0, "/a", "alice", "n", ["x"], {}, "", 2, 2, 0, JobState.RUNNING, 0.0)
    store.insert_job(job)
    job.parts = [PartRecord(job.id, 0, "n1", 0, [0, 1], ["u0", "u1"], PartPhase.RUNNING)]
    store.save_job(job)
    state.jobs[job.id] = job
    clock.t += 100.0
    state.snapshot()
    used = state.usage[(core.ConsumerPath("/a"), "alice")]
    want = core.decay_usage({}, {"k": 2}, 100.0, 3600.0)["k"]
    assert used == pytest.approx(want)
    state.save_usage()
    clock.t += 50.0  # the daemon is away; the job runs on
    again = ClusterState(store, clock)
    again.load()  # the job is still running, as far as the store knows
    got = again.usage[(core.ConsumerPath("/a"), "alice")]
    assert got == pytest.approx(core.decay_usage({"k": want}, {"k": 2}, 50.0, 3600.0)["k"])
    # After a long outage, the job counts only for what its agent kept it (OUTAGE_CREDIT_S).
    clock.t += 10 * 3600.0
    later = ClusterState(store, clock)
    later.load()
    credited = core.decay_usage({"k": want}, {"k": 2}, OUTAGE_CREDIT_S, 3600.0)
    expected = core.decay_usage(credited, {}, 50.0 + 10 * 3600.0 - OUTAGE_CREDIT_S, 3600.0)
    assert later.usage[(core.ConsumerPath("/a"), "alice")] == pytest.approx(expected["k"])


def test_usage_survives_a_sigkill(tmp_path: Path) -> None:
    node = f"usage-{os.getpid()}"
    with running_cluster(tmp_path, POLICY, {node: 2}) as c:
        c.client.submit("/a", [sys.executable, "-c", "import time; time.sleep(300)"], 2)
        time.sleep(USAGE_SAVE_S + 3)

        def kept() -> float:
            with sqlite3.connect(c.db) as db:
                row = db.execute("SELECT SUM(gpu_seconds) FROM usage").fetchone()
            return float(row[0] or 0.0)

        before = wait_for("usage kept", kept, timeout_s=30)
        assert before >= 2 * 5  # 2 GPUs for more than 5 s
        c.kill_daemon()
        c.start_daemon()
        # The restarted daemon goes on from what was kept, not from zero.
        after = wait_for("usage kept again", lambda: kept() > before and kept(), timeout_s=40)
        assert after > before
