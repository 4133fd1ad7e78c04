"""A job's declared time limit (`schedctl submit --time`, docs/scheduling.md) holds: past
it the daemon stops the job, as Slurm does; the limit is what lets a job backfill into
GPUs held for a larger job's reservation, so it must not be a promise only."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from harness import running_cluster, wait_for

from schedulerd.api.v1 import jobs_pb2

POLICY = """
version: 1
consumers:
  a: {owned: 2, grace: 2s}
"""


def test_a_job_past_its_time_limit_is_stopped(tmp_path: Path) -> None:
    node = f"tl-{os.getpid()}"
    with running_cluster(tmp_path, POLICY, {node: 2}) as c:
        sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
        job = c.client.submit("/a", sleeper, 1, time_limit_s=2)
        assert job.spec.time_limit_seconds == 2
        free = c.client.submit("/a", sleeper, 1)  # no limit: runs on
        ended = wait_for(
            "the job stopped at its time limit",
            lambda: (g := c.client.get_job(job.id)).state == jobs_pb2.TIMEOUT and g,
            timeout_s=60,
        )
        assert "time limit (2 s) ran out" in ended.reason, ended.reason
        assert c.client.get_job(free.id).state == jobs_pb2.RUNNING
