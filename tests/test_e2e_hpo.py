"""End to end: experiments on a real daemon and agent (fake GPUs); trials are
tiny Python scripts that report through schedulerd.hpo (docs/hpo.md)."""

from __future__ import annotations

import time
from pathlib import Path

from harness import running_cluster, wait_for
from hpo_helpers import spec

from schedulerd.api.v1 import experiments_pb2 as pb
from schedulerd.api.v1 import jobs_pb2

POLICY = """
version: 1
consumers:
  team: {share: 1}
"""


def test_twelve_trials_three_at_a_time_finish_with_a_best_trial(tmp_path: Path) -> None:
    with running_cluster(tmp_path, POLICY, {"n1": 8}) as cluster:
        c = cluster.client
        exp = c.create_experiment(spec(tmp_path, trials=12, parallel=3))
        assert exp.state == pb.EXPERIMENT_RUNNING and exp.trials_total == 12
        most = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = c.get_experiment(exp.id)
            unfinished = sum(
                1 for t in now.trials if t.state in (pb.TRIAL_WAITING, pb.TRIAL_RUNNING)
            )
            jobs = c.list_jobs("/team", ["PENDING", "RUNNING", "PREEMPTED"])
            most = max(most, unfinished, len(jobs))
            if now.state != pb.EXPERIMENT_RUNNING:
                break
            time.sleep(0.1)
        assert now.state == pb.EXPERIMENT_DONE, now
        assert most <= 3, most
        assert most == 3  # 8 free GPUs: the limit is what held it back
        assert len(now.trials) == 12 and now.trials_finished == 12
        assert [t.number for t in now.trials] == list(range(12))
        assert all(t.state == pb.TRIAL_COMPLETE for t in now.trials), now.trials
        best = min(now.trials, key=lambda t: t.value)
        assert now.HasField("best") and now.best.number == best.number
        assert now.best.value == best.value
        assert set(now.best.params) == {"x", "k"}
        # Each trial was a job of the consumer that ran the filled-in command.
        job = c.get_job(now.trials[0].job_id)
        assert job.state == jobs_pb2.SUCCEEDED and job.spec.consumer == "/team"
        assert job.spec.env["SCHEDULERD_TRIAL"] == "0"
