"""Agents that die, come back, or freeze (docs/fencing.md), as real processes with real
cgroups, while a sampler checks that no GPU is ever held by two live jobs (from every
job process on the machine and ListNodes, not from the daemon's records)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpu_sampler import GpuSampler, daemon_view_of, job_processes
from harness import Cluster, remove_agent_cgroups, sleep_job, wait_for

from schedulerd.api.v1 import admin_pb2, jobs_pb2

POLICY = "version: 1\nconsumers:\n  a: {grace: 2s}\n"
HEARTBEAT_S = 0.5
SHORT_TIMEOUT_S = 5.0  # for the test that waits it out
LONG_TIMEOUT_S = 20.0  # for the tests that must come back before it


@contextlib.contextmanager
def cluster_with_sampler(
    root: Path, nodes: dict[str, int], timeout_s: float = LONG_TIMEOUT_S
) -> Iterator[tuple[Cluster, GpuSampler]]:
    names = [f"{n}-{os.getpid()}" for n in nodes]
    args = ("--heartbeat", str(HEARTBEAT_S), "--node-timeout", str(timeout_s))
    cluster = Cluster(root, POLICY, daemon_args=args)
    sampler = GpuSampler(daemon_view_of(cluster.client.nodes), nodes=names)
    try:
        cluster.start_daemon()
        for name, gpus in zip(names, nodes.values(), strict=True):
            cluster.start_agent(name, gpus)
        cluster.wait_nodes_up(len(names))
        sampler.start()
        yield cluster, sampler
    finally:
        try:
            sampler.stop()
        finally:
            cluster.stop()
            for name in names:
                remove_agent_cgroups(name)
    assert sampler.samples > 10
    assert sampler.violations == [], sampler.violations[:5]
    assert sampler.twice == [], sampler.twice[:5]


def _state(cluster: Cluster, job_id: int) -> jobs_pb2.Job:
    return cluster.client.get_job(job_id)


def _running(cluster: Cluster, job_id: int) -> jobs_pb2.Job | None:
    job = _state(cluster, job_id)
    return job if job.state == jobs_pb2.RUNNING and job.gpus else None


def _node_state(cluster: Cluster, name: str) -> int:
    return next(n.state for n in cluster.client.nodes() if n.name == name)


def _pids_of(job_id: int) -> set[int]:
    """This test's processes of the job (node names carry the test's pid)."""
    mine = f"-{os.getpid()}"
    return {
        pid
        for pid, (node, (job, _), _) in job_processes().items()
        if job == job_id and node.endswith(mine)
    }


def test_a_killed_agent_restarted_in_time_adopts_its_jobs(tmp_path: Path) -> None:
    with cluster_with_sampler(tmp_path, {"n1": 4}) as (cluster, _):
        node = next(iter(cluster.agents))
        c = cluster.client
        long = c.submit("/a", sleep_job(600), gpus=1)
        fails = c.submit("/a", sleep_job(2, exit_code=7), gpus=1)
        works = c.submit("/a", sleep_job(2), gpus=1)
        for job in (long, fails, works):
            # Started by the agent, not only placed by the daemon: a part the agent had
            # not yet recorded when killed is (rightly) killed as an orphan and restarted.
            line = f"job {job.id} attempt 0 started"
            wait_for(f"job {job.id} to start", lambda t=line: t in cluster.agent_log(node))
        waiting = c.submit("/a", sleep_job(600), gpus=2)  # needs the GPUs of the two short ones
        before = _pids_of(long.id)
        assert before
        cluster.agents[node].send_signal(signal.SIGKILL)
        cluster.agents[node].wait(10)
        # The two short jobs end while no agent watches; the daemon must not hand out
        # their GPUs until an agent says they are gone.
        wait_for("the short jobs' processes to end", lambda: not _pids_of(works.id))
        time.sleep(0.5)
        assert _state(cluster, waiting.id).state == jobs_pb2.PENDING
        cluster.start_agent(node, 4)
        cluster.wait_nodes_up(1)

        def ended(job_id: int) -> jobs_pb2.Job | None:
            job = _state(cluster, job_id)
            return job if job.state not in (jobs_pb2.PENDING, jobs_pb2.RUNNING) else None

        assert wait_for("the failed job", lambda: ended(fails.id)).exit_code == 7
        assert wait_for("the good job", lambda: ended(works.id)).state == jobs_pb2.SUCCEEDED
        assert wait_for("the waiting job to start", lambda: _running(cluster, waiting.id))
        adopted = _state(cluster, long.id)
        assert adopted.state == jobs_pb2.RUNNING and adopted.attempt == 0
        assert _pids_of(long.id) == before  # the same processes, adopted
        assert "adopted 1 running job parts" in cluster.agent_log(node)


def test_an_agent_back_after_the_node_timeout_has_its_old_parts_stopped(tmp_path: Path) -> None:
    with cluster_with_sampler(tmp_path, {"n1": 2}, SHORT_TIMEOUT_S) as (cluster, _):
        node = next(iter(cluster.agents))
        c = cluster.client
        job = c.submit("/a", sleep_job(600), gpus=2)
        line = f"job {job.id} attempt 0 started"
        wait_for("the job to start", lambda: line in cluster.agent_log(node))
        old = _pids_of(job.id)
        cluster.agents[node].send_signal(signal.SIGKILL)
        cluster.agents[node].wait(10)
        wait_for("the node to go down", lambda: _node_state(cluster, node) == admin_pb2.DOWN)
        requeued = wait_for(
            "the job to be requeued as lost",
            lambda: (j := _state(cluster, job.id)).state == jobs_pb2.PREEMPTED and j,
        )
        assert requeued.attempt == 1 and requeued.history[-1].kind == "lost"
        fenced = [g.fenced_job_id for n in c.nodes() for g in n.gpus]
        assert fenced == [job.id, job.id]
        # No agent, but its shims kept the lease: the old attempt stopped itself before
        # the daemon requeued it (so it never ran beside attempt 1).
        assert not _pids_of(job.id)
        cluster.start_agent(node, 2)
        again = wait_for("attempt 1 to run", lambda: _running(cluster, job.id))
        assert again.attempt == 1
        assert not (old & _pids_of(job.id))
        assert all(not g.fenced_job_id for n in c.nodes() for g in n.gpus)
        assert [e.kind for e in again.history].count("lost") == 1


def test_a_frozen_agent_is_unreachable_and_comes_back_with_its_jobs(tmp_path: Path) -> None:
    with cluster_with_sampler(tmp_path, {"n1": 4, "n2": 2}) as (cluster, _):
        n1, n2 = list(cluster.agents)
        c = cluster.client
        # Place the jobs by hand: `held` on n1 (which keeps 2 free GPUs), `filler` on n2.
        c.drain(n2)
        held = c.submit("/a", sleep_job(600), gpus=2)
        wait_for("the first job to run", lambda: _running(cluster, held.id))
        c.undrain(n2)
        c.drain(n1)
        filler = c.submit("/a", sleep_job(600), gpus=2)
        wait_for("the filler to run", lambda: _running(cluster, filler.id))
        c.undrain(n1)
        frozen = cluster.agents[n1]
        frozen.send_signal(signal.SIGSTOP)
        try:
            # 2.5 missed intervals after the last heartbeat, itself at most one before.
            wait_for(
                "UNREACHABLE",
                lambda: _node_state(cluster, n1) == admin_pb2.UNREACHABLE,
                timeout_s=3 * HEARTBEAT_S + 0.5,
                every_s=0.05,
            )
            waiting = c.submit("/a", sleep_job(600), gpus=1)
            time.sleep(6 * HEARTBEAT_S)  # cycles run; the frozen node has 2 free GPUs
            assert _state(cluster, waiting.id).state == jobs_pb2.PENDING
            assert _node_state(cluster, n2) == admin_pb2.UP
        finally:
            frozen.send_signal(signal.SIGCONT)
        wait_for("UP again", lambda: _node_state(cluster, n1) == admin_pb2.UP)
        back = _state(cluster, held.id)
        assert back.state == jobs_pb2.RUNNING and back.attempt == 0
        started = wait_for("the waiting job to run", lambda: _running(cluster, waiting.id))
        assert started.gpus[0].node == n1


if os.geteuid() != 0:  # pragma: no cover - these machines run tests as root
    pytestmark = pytest.mark.skip("cgroups need root")
