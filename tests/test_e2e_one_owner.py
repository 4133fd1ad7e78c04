"""One owner each (review findings): a second daemon on the same store, a second agent on
the same state dir, and a second agent under a node name whose agent is alive are all
refused, and the first keeps working; no GPU is ever held twice meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from gpu_sampler import GpuSampler, daemon_view_of
from harness import free_port, remove_agent_cgroups, running_cluster, sleep_job, wait_for

from schedulerd.api.v1 import jobs_pb2

POLICY = "version: 1\nconsumers:\n  a: {grace: 1s}\n"
# Runs a command as if on another machine: in its own mount namespace, with this machine's
# cgroup mounts hidden under an empty tmpfs.
ANOTHER_HOST = (
    "unshare", "-m", "--", "sh", "-c", 'mount -t tmpfs none /sys/fs/cgroup && exec "$@"', "sh",
)  # fmt: skip


def test_a_second_daemon_on_the_same_store_is_refused(tmp_path: Path) -> None:
    with running_cluster(tmp_path, POLICY, {}) as cluster:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "schedulerd.daemon",
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--db",
                str(cluster.db),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert "the store is in use by another process" in second.stderr
        assert cluster.client.consumers().consumers  # the first one serves on


def test_a_second_agent_for_one_node_is_refused(tmp_path: Path) -> None:
    node = f"dup-{os.getpid()}"
    try:
        with running_cluster(tmp_path, POLICY, {node: 1}, daemon_args=("--heartbeat", "0.3")) as c:
            sampler = GpuSampler(daemon_view_of(c.client.nodes), nodes=[node])
            sampler.start()
            job = c.client.submit("/a", sleep_job(600), gpus=1)
            line = f"job {job.id} attempt 0 started"
            wait_for("the job to start", lambda: line in c.agent_log(node))
            # The same state dir: the agent refuses to start at all.
            same = subprocess.run(
                [sys.executable, "-m", "agent", "--daemon", c.address, "--node", node,
                 "--fake-gpus", "1", "--state-dir", str(tmp_path / "agents")],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert same.returncode == 2 and "in use by another process" in same.stderr
            # On this machine, another state dir: refused by the node's machine-wide lock
            # (in the lock dir the cluster's agents use, tests/harness.py).
            here = subprocess.run(
                [sys.executable, "-m", "agent", "--daemon", c.address, "--node", node,
                 "--fake-gpus", "1", "--state-dir", str(tmp_path / "here"),
                 "--lock-dir", str(tmp_path / "locks")],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert here.returncode == 2 and f"node {node} on this machine" in here.stderr
            # A cloned machine (its own lock dir and, as on another host, none of our
            # cgroups: its own mount namespace hides them under a tmpfs): the daemon refuses
            # its Register while the first agent is alive.
            other = subprocess.Popen(
                [*ANOTHER_HOST, sys.executable, "-m", "agent", "--daemon", c.address,
                 "--node", node,
                 "--fake-gpus", "1", "--state-dir", str(tmp_path / "clone"),
                 "--lock-dir", str(tmp_path / "clone-run"), "--containment", "pgroup"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            time.sleep(3)
            other.terminate()
            out, _ = other.communicate(timeout=30)
            sampler.stop()
            assert "ALREADY_EXISTS" in out and "live agent session" in out, out[-2000:]
            still = c.client.get_job(job.id)
            assert still.state == jobs_pb2.RUNNING and still.attempt == 0
            assert sampler.violations == [] and sampler.twice == []
    finally:
        remove_agent_cgroups(node)
