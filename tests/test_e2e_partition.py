"""A network partition (docs/fencing.md): an agent in a network namespace made by the
test reaches the daemon through a veth pair; the link is cut for longer than the node
timeout, then restored. The job is requeued once, never runs as two attempts at once,
no GPU is held twice, and the stale part is stopped.

Traffic stays on this machine: loopback, and the veth pair between the root namespace
and the test's own namespace (addresses chosen here, removed at the end)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpu_sampler import GpuSampler, daemon_view_of, job_processes
from harness import Cluster, free_port, remove_agent_cgroups, sleep_job, wait_for

from schedulerd.api.v1 import admin_pb2, jobs_pb2
from schedulerd.auth.ca import CA_CERT, init_ca, issue_node, issue_server

POLICY = "version: 1\nconsumers:\n  a: {grace: 1s}\n"
HEARTBEAT_S = 0.5
TIMEOUT_S = 6.0  # the agent's lease is half of it

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("nsenter")),
    reason="network namespaces need root, ip and nsenter",
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def namespace() -> Iterator[tuple[str, str, str]]:
    """(namespace, host-side link, host address the namespace reaches)."""
    tag = f"{os.getpid() % 10000}"
    ns, host, peer = f"sdpart{tag}", f"sdh{tag}", f"sdn{tag}"
    octet = 1 + os.getpid() % 250
    host_addr, ns_addr = f"10.251.{octet}.1", f"10.251.{octet}.2"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("addr", "add", f"{host_addr}/30", "dev", host)
        _ip("link", "set", host, "up")
        _ip("-n", ns, "addr", "add", f"{ns_addr}/30", "dev", peer)
        _ip("-n", ns, "link", "set", peer, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host, host_addr
    finally:
        subprocess.run(["ip", "link", "del", host], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def test_a_partition_requeues_the_job_once_and_never_runs_it_twice(tmp_path: Path) -> None:
    far, near = f"far-{os.getpid()}", f"near-{os.getpid()}"
    with namespace() as (ns, link, host_addr):
        # Beyond the link the agent is on another "host": it proves it is node `far`
        # with a certificate of the cluster CA, on the daemon's mTLS listener.
        ca = init_ca(tmp_path / "ca")
        ca_cert = tmp_path / "ca" / CA_CERT
        server = issue_server(ca, [host_addr, "127.0.0.1"], tmp_path / "tls")
        node = issue_node(ca, far, tmp_path / "tls")
        agent_port = free_port()
        cluster = Cluster(
            tmp_path,
            POLICY,
            daemon_args=(
                *("--heartbeat", str(HEARTBEAT_S), "--node-timeout", str(TIMEOUT_S)),
                *("--agent-listen", f"0.0.0.0:{agent_port}"),
                *("--tls-cert", str(server.cert_path), "--tls-key", str(server.key_path)),
                *("--tls-client-ca", str(ca_cert)),
            ),
        )
        sampler = GpuSampler(daemon_view_of(cluster.client.nodes), nodes=[far, near])
        try:
            cluster.start_daemon()
            cluster.start_agent(
                far,
                2,
                prefix=_in_netns(ns),
                daemon=f"{host_addr}:{agent_port}",
                extra_args=(
                    *("--tls-ca", str(ca_cert)),
                    *("--tls-cert", str(node.cert_path), "--tls-key", str(node.key_path)),
                ),
            )
            cluster.start_agent(near, 2)
            cluster.wait_nodes_up(2)
            c = cluster.client
            c.drain(near)  # so that the job lands beyond the link
            job = c.submit("/a", sleep_job(600), gpus=2)
            line = f"job {job.id} attempt 0 started"
            wait_for("the job to start far", lambda: line in cluster.agent_log(far))
            c.undrain(near)
            sampler.start()
            old = _pids(job.id, far)
            assert old

            _ip("link", "set", link, "down")  # the cable is cut: packets vanish
            try:
                moved = wait_for(
                    "the job to run again near",
                    lambda: _running_on(c, job.id, near),
                    timeout_s=TIMEOUT_S + 20,
                )
                assert moved.attempt == 1
                state = {n.name: n.state for n in c.nodes()}
                assert state[far] == admin_pb2.DOWN
                # The far agent stopped its copy by its lease, before the daemon requeued it.
                assert not _pids(job.id, far)
                assert "no word from the daemon" in cluster.agent_log(far)
                time.sleep(2 * HEARTBEAT_S)
            finally:
                _ip("link", "set", link, "up")  # the cable is back

            wait_for("the far node back up", lambda: _state(c, far) == admin_pb2.UP, 30)
            wait_for("its GPUs unfenced", lambda: not _fenced(c, far), 30)
            final = c.get_job(job.id)
            assert final.state == jobs_pb2.RUNNING and final.attempt == 1
            assert {g.node for g in final.gpus} == {near}
            assert [e.kind for e in final.history].count("lost") == 1
            assert not _pids(job.id, far)
        finally:
            try:
                sampler.stop()
            finally:
                cluster.stop()
                for node in (far, near):
                    remove_agent_cgroups(node)
    assert sampler.samples > 10
    assert sampler.violations == [], sampler.violations[:5]
    assert sampler.twice == [], sampler.twice[:5]


def _pids(job_id: int, node: str) -> set[int]:
    return {p for p, (n, (j, _), _) in job_processes().items() if j == job_id and n == node}


def _running_on(c: object, job_id: int, node: str) -> jobs_pb2.Job | None:
    job = c.get_job(job_id)  # type: ignore[attr-defined]
    running = job.state == jobs_pb2.RUNNING and job.gpus and job.gpus[0].node == node
    return job if running and _pids(job_id, node) else None


def _state(c: object, node: str) -> int:
    return next(n.state for n in c.nodes() if n.name == node)  # type: ignore[attr-defined]


def _fenced(c: object, node: str) -> list[int]:
    nodes = c.nodes()  # type: ignore[attr-defined]
    return [g.fenced_job_id for n in nodes if n.name == node for g in n.gpus if g.fenced_job_id]


def _in_netns(ns: str) -> tuple[str, ...]:
    # Not `ip netns exec`: it also makes a mount namespace and remounts /sys, where the
    # cgroup mounts are gone (the agent would fall back to process groups).
    return ("nsenter", f"--net=/var/run/netns/{ns}", "--")
