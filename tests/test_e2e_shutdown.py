"""Orderly shutdowns (docs/fencing.md), as real processes: SIGTERM to `schedulerd
--local-agent` with jobs running and waiting leaves no job process behind and no job
FAILED; all are back in the queue and run after the next start. An agent told to stop
while the daemon runs refuses new work and its jobs are requeued."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from gpu_sampler import job_processes
from harness import free_port, remove_agent_cgroups, running_cluster, wait_for

from schedulerd.api.v1 import jobs_pb2
from schedulerd.client import Client, ClientError

# Runs until the marker exists; after the restart it exits 0 at once.
WAIT_FOR_MARKER = "while [ ! -e {marker} ]; do sleep 0.1; done"


def _start(tmp: Path, address: str) -> subprocess.Popen[bytes]:
    log = open(tmp / "daemon.log", "ab")  # noqa: SIM115 - lives with the process
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schedulerd.daemon",
            "--listen",
            address,
            "--db",
            "schedulerd.db",
            "--tick",
            "0.2",
            "--local-agent",
            "--local-agent-fake-gpus",
            "2",
        ],
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _states(db: Path) -> dict[int, str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT id, state FROM jobs").fetchall())


def test_sigterm_to_the_daemon_with_a_local_agent_requeues_every_job(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    node = f"{socket.gethostname()}-local"
    marker = tmp_path / "go"
    command = ["sh", "-c", WAIT_FOR_MARKER.format(marker=marker)]
    daemon = _start(tmp_path, address)
    client = Client(address, timeout_s=10)
    try:
        wait_for("the local agent", lambda: _up(client))
        ids = [client.submit("/default", command, gpus=1).id for _ in range(4)]

        def two_running() -> bool:
            # Started by the agent (its log goes to the daemon's), not only placed.
            log = (tmp_path / "daemon.log").read_text(errors="replace")
            return sum(f"job {i} attempt 0 started" in log for i in ids) == 2

        wait_for("two jobs to run", two_running)
        assert _ours(node)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
        assert _ours(node) == set()  # no job process outlives the daemon and its agent
        states = _states(tmp_path / "schedulerd.db")
        assert sorted(states) == ids
        assert set(states.values()) <= {"PENDING", "PREEMPTED"}, states
        with sqlite3.connect(f"file:{tmp_path / 'schedulerd.db'}?mode=ro", uri=True) as conn:
            kinds = [k for (k,) in conn.execute("SELECT kind FROM events")]
        assert kinds.count("node-stopped") == 2, kinds  # the two that ran; none failed

        marker.write_text("")
        daemon = _start(tmp_path, address)

        def all_succeeded() -> bool:
            try:
                return all(client.get_job(i).state == jobs_pb2.SUCCEEDED for i in ids)
            except ClientError:
                return False

        wait_for("every job to run and succeed after the restart", all_succeeded, 60)
        history = [e.kind for e in client.get_job(ids[0]).history]
        assert "failed" not in history
    finally:
        client.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        remove_agent_cgroups(node)


def test_a_stopping_agent_gets_no_new_work_and_its_jobs_are_requeued(tmp_path: Path) -> None:
    policy = "version: 1\nconsumers:\n  a: {grace: 2s}\n"
    with running_cluster(tmp_path, policy, {"solo-stop": 2}) as cluster:
        c = cluster.client
        running = c.submit("/a", ["sleep", "600"], gpus=2)
        line = f"job {running.id} attempt 0 started"
        wait_for("the job to start", lambda: line in cluster.agent_log("solo-stop"))
        waiting = c.submit("/a", ["sleep", "600"], gpus=1)
        agent = cluster.agents["solo-stop"]
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        job = c.get_job(running.id)
        assert job.state == jobs_pb2.PREEMPTED
        kinds = [e.kind for e in job.history]
        assert kinds[-1] == "node-stopped" and "shut down" in job.history[-1].message
        # Nothing new was placed on the stopping agent, though its GPUs came free.
        assert kinds.count("started") == 1
        after = c.get_job(waiting.id)
        assert after.state == jobs_pb2.PENDING and "started" not in [e.kind for e in after.history]
        assert not _ours("solo-stop")
    remove_agent_cgroups("solo-stop")


def _up(client: Client) -> bool:
    try:
        return any(n.state == 1 for n in client.nodes())
    except ClientError:
        return False


def _ours(node: str) -> set[int]:
    return {pid for pid, (where, _, _) in job_processes().items() if where == node}


def test_sigterm_to_the_daemon_leaves_jobs_on_separate_agents_running(tmp_path: Path) -> None:
    policy = "version: 1\nconsumers:\n  a: {grace: 2s}\n"
    node = f"apart-{os.getpid()}"
    try:
        with running_cluster(tmp_path, policy, {node: 2}) as cluster:
            c = cluster.client
            job = c.submit("/a", ["sleep", "600"], gpus=2)
            line = f"job {job.id} attempt 0 started"
            wait_for("the job to start", lambda: line in cluster.agent_log(node))
            pids = _ours(node)
            assert cluster.daemon is not None
            cluster.daemon.send_signal(signal.SIGTERM)
            assert cluster.daemon.wait(30) == 0
            assert _ours(node) == pids  # the daemon's shutdown stops no job
            cluster.start_daemon()
            cluster.wait_nodes_up(1)
            again = c.get_job(job.id)
            assert again.state == jobs_pb2.RUNNING and again.attempt == 0
            assert _ours(node) == pids
    finally:
        remove_agent_cgroups(node)
