"""Jobs contained, through the whole system (docs/agent.md): a job that leaves a `setsid`
child, one that double-forks a daemon, one that ignores SIGTERM: when the daemon
reports each ended, none of its processes is left, and the next job on that GPU finds
none of them. And the logs of a job that spans nodes, every part's, prefixed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gpu_sampler import job_processes
from harness import remove_agent_cgroups, running_cluster, wait_for

from schedulerd.api.v1 import jobs_pb2

POLICY = "version: 1\nconsumers:\n  a: {grace: 1s}\n"
ENDED = (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED)

SETSID_CHILD = ["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 < /dev/null & exit 0"]
DOUBLE_FORK = [
    sys.executable,
    "-c",
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(600)\n"
    "    os._exit(0)\n"
    "os.wait()\n",
]
IGNORES_TERM = [
    sys.executable,
    "-c",
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)",
]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")


def _of(job_id: int, node: str) -> set[int]:
    return {p for p, (n, (j, _), _) in job_processes().items() if j == job_id and n == node}


def test_escaping_processes_are_gone_when_the_job_ends(tmp_path: Path) -> None:
    node = f"box-{os.getpid()}"
    try:
        with running_cluster(tmp_path, POLICY, {node: 1}) as cluster:
            c = cluster.client
            for command, cancel in (
                (SETSID_CHILD, False),
                (DOUBLE_FORK, False),
                (IGNORES_TERM, True),
            ):
                job = c.submit("/a", command, gpus=1)
                after = c.submit("/a", ["sleep", "600"], gpus=1)  # the next on that GPU
                if cancel:
                    line = f"job {job.id} attempt 0 started"
                    wait_for("it to start", lambda t=line: t in cluster.agent_log(node))
                    c.cancel(job.id)
                ended = wait_for(
                    "the job to end", lambda j=job: (g := c.get_job(j.id)).state in ENDED and g
                )
                assert not _of(job.id, node), (command, ended.reason)
                wait_for("the next job to run", lambda a=after: _of(a.id, node))
                assert not _of(job.id, node)
                c.cancel(after.id)
                wait_for("the next job to end", lambda a=after: c.get_job(a.id).state in ENDED)
            assert c.get_job(job.id).state == jobs_pb2.CANCELLED
    finally:
        remove_agent_cgroups(node)


# Rank 0 listens at MASTER_ADDR:MASTER_PORT, rank 1 connects: each prints the other's node.
MEET = (
    "import os, socket, time\n"
    "me = os.environ['SCHEDULERD_NODE'].encode()\n"
    "at = (os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']))\n"
    "if os.environ['SCHEDULERD_NODE_RANK'] == '0':\n"
    "    s = socket.create_server(at)\n"
    "    c, _ = s.accept()\n"
    "else:\n"
    "    for _ in range(200):\n"
    "        try:\n"
    "            c = socket.create_connection(at); break\n"
    "        except OSError:\n"
    "            time.sleep(0.05)\n"
    "c.sendall(me); print('met', c.recv(100).decode(), flush=True)\n"
)


def test_the_logs_of_a_job_on_two_nodes_show_every_part(tmp_path: Path) -> None:
    nodes = {f"left-{os.getpid()}": 2, f"right-{os.getpid()}": 2}
    try:
        with running_cluster(tmp_path, POLICY, nodes) as cluster:
            c = cluster.client
            say = "echo hello from $SCHEDULERD_NODE rank $SCHEDULERD_NODE_RANK"
            meet = ["sh", "-c", f'{say} && exec "$0" -c "$1"', sys.executable, MEET]
            job = c.submit("/a", meet, gpus=4)
            done = wait_for("the job", lambda: (j := c.get_job(job.id)).state in ENDED and j)
            assert done.state == jobs_pb2.SUCCEEDED, cluster.log_tail()
            chunks = list(c.log_chunks(job.id, follow=False))
            assert {ch.node for ch in chunks} == set(nodes)
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "schedulerd.cli",
                    "--daemon",
                    cluster.address,
                    "logs",
                    str(job.id),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            ranks = {ch.node: ch.node_rank for ch in chunks}
            assert sorted(ranks.values()) == [0, 1]
            for node, rank in ranks.items():
                assert f"[{node} r{rank}] hello from {node} rank {rank}" in out, out
            # The two parts met at MASTER_ADDR:MASTER_PORT, on rank 0's node.
            rank0 = next(n for n, r in ranks.items() if r == 0)
            rank1 = next(n for n, r in ranks.items() if r == 1)
            assert f"[{rank0} r0] met {rank1}" in out, out
            assert f"[{rank1} r1] met {rank0}" in out, out
    finally:
        for node in nodes:
            remove_agent_cgroups(node)
