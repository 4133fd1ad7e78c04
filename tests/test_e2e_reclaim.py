"""Reclaim end to end: a borrower's low-priority rigid job is preempted (SIGTERM,
grace, SIGKILL), goes back to the queue as PREEMPTED keeping its place, and
resumes from its checkpoint when it runs again (issue: reclaim and preemption)."""

from __future__ import annotations

import sys
from pathlib import Path

from harness import running_cluster, sleep_job, wait_for

from schedulerd.api.v1 import jobs_pb2

POLICY = """
version: 1
consumers:
  low: {share: 1, grace: 5s}
  high: {owned: 4, share: 1}
"""

# Counts steps; on SIGTERM saves its step and exits; on start resumes from the save.
CHECKPOINTING = """
import json, os, signal, sys, time
path = os.path.join(sys.argv[1], "ckpt-" + os.environ["SCHEDULERD_JOB_ID"] + ".json")
step = json.load(open(path))["step"] if os.path.exists(path) else 0
print(f"attempt {os.environ['SCHEDULERD_ATTEMPT']} starts at step {step}", flush=True)
stopping = []
signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
while step < int(sys.argv[2]):
    if stopping:
        with open(path + ".tmp", "w") as f:
            json.dump({"step": step}, f)
        os.replace(path + ".tmp", path)
        print(f"checkpointed at step {step}", flush=True)
        sys.exit(0)
    time.sleep(0.05)
    step += 1
print(f"done at step {step}", flush=True)
"""


def test_low_priority_rigid_job_is_preempted_requeued_and_resumes(tmp_path: Path) -> None:
    with running_cluster(tmp_path, POLICY, {"n1": 4}) as cluster:
        c = cluster.client
        keeper = c.submit("/low", sleep_job(60), gpus=2, priority=5, name="keeper")
        victim = c.submit(
            "/low",
            [sys.executable, "-c", CHECKPOINTING, str(tmp_path), "200"],
            gpus=2,
            priority=0,
            name="victim",
        )
        wait_for(
            "both to run",
            lambda: all(c.get_job(j.id).state == jobs_pb2.RUNNING for j in (keeper, victim)),
        )
        wait_for(
            "the victim to make progress",
            lambda: b"starts at step 0" in b"".join(c.logs(victim.id, follow=False)),
        )

        owner = c.submit("/high", sleep_job(2), gpus=2, name="owner")
        # /high is below its entitlement: the lowest-priority borrower job goes.
        requeued = wait_for(
            "the victim back in the queue",
            lambda: (j := c.get_job(victim.id)).state == jobs_pb2.PREEMPTED and j,
        )
        assert requeued.attempt == 1
        kinds = [e.kind for e in requeued.history]
        assert kinds[:4] == ["submitted", "started", "preempt-requested", "preempted"]
        assert f"to job {owner.id} of /high" in requeued.history[2].message
        assert c.get_job(keeper.id).state == jobs_pb2.RUNNING  # higher priority: kept

        wait_for(
            "the owner to run and end",
            lambda: c.get_job(owner.id).state == jobs_pb2.SUCCEEDED,
            timeout_s=30,
        )
        done = wait_for(
            "the victim to finish its second attempt",
            lambda: (j := c.get_job(victim.id)).state == jobs_pb2.SUCCEEDED and j,
            timeout_s=60,
        )
        log = b"".join(c.logs(victim.id, follow=False)).decode()
        saved = int(log.split("checkpointed at step ")[1].split()[0])
        assert saved > 0
        assert f"attempt 1 starts at step {saved}" in log  # resumed, not restarted
        assert "done at step 200" in log
        assert done.attempt == 1 and done.exit_code == 0
        c.cancel(keeper.id)
