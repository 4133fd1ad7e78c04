"""A store that fails its writes (its file on a full tmpfs): cancel, drain, submit and a
plan each change nothing, the RPCs answer UNAVAILABLE, and memory equals the store
afterwards; once there is room again, everything goes through (docs/fencing.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gpu_sampler import job_processes
from harness import Cluster, remove_agent_cgroups, sleep_job, wait_for

from schedulerd.api.v1 import jobs_pb2
from schedulerd.client import ClientError

POLICY = "version: 1\nconsumers:\n  a: {grace: 1s}\n"
NODE = f"full-{os.getpid()}"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def small_tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(fs: Path) -> Path:
    filler = fs / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def _stored(db: Path) -> dict[int, tuple[str, int, int]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT id, state, cancel_requested, attempt FROM jobs").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _drained(db: Path) -> bool:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return bool(conn.execute("SELECT drained FROM nodes").fetchone()[0])


def _unavailable(call: object) -> str:
    with pytest.raises(ClientError) as e:
        call()  # type: ignore[operator]
    assert e.value.code == grpc.StatusCode.UNAVAILABLE, e.value
    return e.value.details


def test_a_full_disk_changes_nothing_and_says_unavailable(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs") as fs:
        cluster = Cluster(tmp_path, POLICY, daemon_args=("--heartbeat", "0.3"))
        cluster.db = fs / "schedulerd.db"
        try:
            cluster.start_daemon()
            agent = cluster.start_agent(NODE, 2)
            cluster.wait_nodes_up(1)
            c = cluster.client
            running = c.submit("/a", sleep_job(600), gpus=1)
            # Started, and its start reported (the report is a write, that would fail later).
            line = f"job {running.id} attempt 0 started"
            wait_for("a job to start", lambda: line in cluster.agent_log(NODE))
            time.sleep(0.5)
            # A frozen agent writes nothing (heartbeats are not stored) and is UNREACHABLE:
            # the next job waits for it.
            agent.send_signal(signal.SIGSTOP)
            wait_for("the node to be unreachable", lambda: c.nodes()[0].state == 2)
            waiting = c.submit("/a", sleep_job(0), gpus=1)
            filler = _fill(fs)
            try:
                assert "not cancelled" in _unavailable(lambda: c.cancel(running.id))
                assert "not cancelled" in _unavailable(lambda: c.cancel(waiting.id))
                assert "unchanged" in _unavailable(lambda: c.drain(NODE))
                assert "not submitted" in _unavailable(lambda: c.submit("/a", ["true"], gpus=1))
                assert _memory(c, running.id, waiting.id) == _stored(cluster.db)
                assert not any(n.drained for n in c.nodes()) and not _drained(cluster.db)
            finally:
                agent.send_signal(signal.SIGCONT)
            # The node is back: the loop plans the waiting job's start, cannot commit it,
            # and applies nothing: no start reaches the agent.
            wait_for("the node to be up", lambda: c.nodes()[0].state == 1)
            wait_for("a failed plan", lambda: "plan not committed" in cluster.log_tail(200))
            assert c.get_job(waiting.id).state == jobs_pb2.PENDING
            assert not [p for p, (_, (j, _), _) in job_processes().items() if j == waiting.id]
            assert _memory(c, running.id, waiting.id) == _stored(cluster.db)
            filler.unlink()  # room again: the same plan goes through
            wait_for("the waiting job to succeed", lambda: c.get_job(waiting.id).state == 3)
            c.cancel(running.id)
            wait_for("the cancel", lambda: c.get_job(running.id).state == jobs_pb2.CANCELLED)
        finally:
            cluster.stop()
            remove_agent_cgroups(NODE)


def _memory(c: object, *ids: int) -> dict[int, tuple[str, int, int]]:
    jobs = [c.get_job(i) for i in ids]  # type: ignore[attr-defined]
    return {
        j.id: (jobs_pb2.JobState.Name(j.state), int(j.cancel_requested), j.attempt) for j in jobs
    }
