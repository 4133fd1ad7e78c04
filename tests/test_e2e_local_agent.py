"""The Quick start's main job: `schedulerd --local-agent` on the embedded default
policy, a daemon with an agent child process, as real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from harness import free_port, wait_for

from schedulerd.api.v1 import admin_pb2, jobs_pb2
from schedulerd.client import Client, ClientError


def test_local_agent_runs_jobs_from_any_working_directory(tmp_path: Path) -> None:
    # A folder named "agent" in the working directory once shadowed the agent
    # package: the local agent died at import on the daemon's second start there.
    (tmp_path / "agent").mkdir()
    address = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "daemon.log", "ab")  # noqa: SIM115 - lives with the process
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schedulerd.daemon",
            "--listen",
            address,
            "--db",
            "schedulerd.db",
            "--local-agent",
            "--local-agent-fake-gpus",
            "2",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = Client(address, timeout_s=10)

    def up() -> list[admin_pb2.Node]:
        try:
            return [n for n in client.nodes() if n.state == 1]
        except ClientError:  # not serving yet
            return []

    try:
        nodes = wait_for("the local agent to register", up)
        assert len(nodes) == 1 and len(nodes[0].gpus) == 2
        job = client.submit("/default", ["sh", "-c", "echo hello from $CUDA_VISIBLE_DEVICES"])

        def done() -> jobs_pb2.Job | None:
            j = client.get_job(job.id)
            return j if j.state == jobs_pb2.SUCCEEDED else None

        wait_for("the job to succeed", done)
        assert b"hello from 0" in b"".join(client.logs(job.id, follow=False))
    finally:
        client.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    # The agent is the daemon's child and goes with it.
    text = (tmp_path / "daemon.log").read_text(errors="replace")
    assert "ImportError" not in text, text
