"""The daemon is SIGKILLed mid-run and restarted: no job is lost, none runs twice,
running jobs keep running and finish with their exit codes recorded, and the
queue keeps its order (issue: "Tests that must pass"; SEMANTICS: invariants)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from harness import running_cluster, wait_for

from schedulerd.api.v1 import jobs_pb2

POLICY = """
version: 1
consumers:
  team: {share: 1, order: fifo}
"""

# Each run appends a line to runs/<job id>: a second run of a job shows as two lines.
RECORDING_JOB = """
import os, sys, time
path = os.path.join({runs!r}, os.environ["SCHEDULERD_JOB_ID"])
with open(path, "a") as f:
    f.write(f"start {{os.getpid()}}\\n")
time.sleep({seconds})
with open(path, "a") as f:
    f.write("end\\n")
sys.exit({code})
"""


def _job(runs: Path, seconds: float, code: int) -> list[str]:
    return [sys.executable, "-c", RECORDING_JOB.format(runs=str(runs), seconds=seconds, code=code)]


def test_sigkill_mid_run_loses_nothing_and_runs_nothing_twice(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    with running_cluster(tmp_path, POLICY, {"n1": 4, "n2": 4}) as cluster:
        c = cluster.client
        # 8 long jobs fill the cluster (exit codes 0..7), 6 short ones wait behind them.
        long_ids = [
            c.submit("/team", _job(runs, 8, code), name=f"long-{code}").id for code in range(8)
        ]
        queued_ids = [
            c.submit("/team", _job(runs, 0.5, 0), name=f"queued-{i}").id for i in range(6)
        ]
        wait_for(
            "all long jobs running and started",
            lambda: all((runs / str(i)).exists() for i in long_ids),
        )
        before = {j.id: j.state for j in c.list_jobs()}
        assert all(before[i] == jobs_pb2.RUNNING for i in long_ids)
        assert all(before[i] == jobs_pb2.PENDING for i in queued_ids)
        pids_before = {i: (runs / str(i)).read_text().split()[1] for i in long_ids}

        cluster.kill_daemon()
        time.sleep(1.0)  # the agents notice and start reconnecting with backoff
        cluster.start_daemon()

        # Right after the restart, before the agents are back: the same jobs, in
        # the same states, in the same order (newest first).
        after = c.list_jobs()
        assert [j.id for j in after] == [*long_ids, *queued_ids][::-1]
        assert {j.id: j.state for j in after} == before

        wait_for(
            "every job to end",
            lambda: all(j.state not in (jobs_pb2.PENDING, jobs_pb2.RUNNING) for j in c.list_jobs()),
            timeout_s=60,
        )
        for code, job_id in enumerate(long_ids):
            job = c.get_job(job_id)
            assert job.HasField("exit_code") and job.exit_code == code, job
            assert job.state == (jobs_pb2.SUCCEEDED if code == 0 else jobs_pb2.FAILED)
            lines = (runs / str(job_id)).read_text().split("\n")
            # One start (the same process, never restarted) and one end.
            assert lines[0] == f"start {pids_before[job_id]}" and lines[1:] == ["end", ""], lines
        for job_id in queued_ids:
            job = c.get_job(job_id)
            assert job.state == jobs_pb2.SUCCEEDED and job.exit_code == 0
            assert (runs / str(job_id)).read_text().count("start") == 1
        # FIFO order kept across the restart: queued jobs started in submit order.
        starts = [c.get_job(i).start_time.ToNanoseconds() for i in queued_ids]
        assert starts == sorted(starts)
