"""The node simulator (bench/nodesim.py) drives a real daemon at 64 nodes.

A real daemon (TLS on, an mTLS listener for agents, node certificates of a CA made here)
and 64 simulated nodes of 8 GPUs, each its own AgentService stream with its own node
certificate, through a short scenario:

1. /b (owns 128 of 512) submits 540 jobs that run for ever and one elastic job: it
   borrows the whole cluster.
2. /a (owns 384) submits 200 jobs that run for ever and 100 that run a second or two (90
   exit 0, 10 exit 3): the daemon reclaims from /b for /a; the short ones finish.
   Steady state: /a holds 200, /b the other 312.
3. A node holding jobs of /a is powered off: past the node timeout its jobs are requeued
   and run elsewhere, /a reclaims again. Steady state: /a 200, /b 304.
4. Everything still live is cancelled.
5. An elastic job of /b (8 to 200 GPUs) borrows 200; /a's 376 new jobs shrink it in
   place to /b's 128 (releases); once they are cancelled it grows back to 200.

All along, a sampler reads ListJobs and ListNodes: no GPU is ever shown held by two jobs,
and no node shows a GPU held by a job that does not list it. The simulated nodes refuse
(and count) any start on a GPU that a live part still holds. No timing is asserted.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import Cluster, free_port, wait_for

from schedulerd.auth.ca import init_ca, issue_server
from schedulerd.client import JobState, job_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import nodesim
from _nodesim_node import Behaviour

NODES, GPUS = 64, 8
POLICY = """\
version: 1
defaults: {grace: 0s, min_runtime: 0s, max_preemptions: null}
consumers:
  a: {owned: 384}
  b: {owned: 128}
"""
FOREVER = {"NODESIM_RUN_S": "inf"}


class World:
    def __init__(self, root: Path) -> None:
        pki = root / "pki"
        ca = init_ca(pki)
        issue_server(ca, ["127.0.0.1"], pki)
        self.agent_port = free_port()
        self.cluster = Cluster(
            root,
            POLICY,
            daemon_args=(
                *("--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key")),
                *("--tls-client-ca", str(pki / "ca.crt")),
                *("--agent-listen", f"127.0.0.1:{self.agent_port}"),
                *("--heartbeat", "1", "--node-timeout", "5"),
            ),
        )
        self.names = nodesim.node_names("sim", NODES)
        self.creds = nodesim.node_credentials(self.names, pki / "nodes", pki)
        self.sim: nodesim.FleetThread | None = None

    def start(self) -> None:
        self.cluster.start_daemon()
        behaviour = Behaviour(draw_run=nodesim.parse_run("uniform:1:2"), seed=7)
        target = f"127.0.0.1:{self.agent_port}"
        self.sim = nodesim.FleetThread(
            lambda: nodesim.Fleet(target, self.names, GPUS, behaviour, self.creds)
        )

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()
        self.cluster.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        w.start()
        yield w
    finally:
        w.stop()


class Sampler:
    """Reads the daemon's view of who holds which GPU, again and again, in a thread."""

    def __init__(self, world: World) -> None:
        self.client = world.cluster.client
        self.violations: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            self.check()

    def check(self) -> None:
        # ListJobs of the running jobs is one page (at most 512 of them), read in one turn
        # of the daemon's loop: a consistent view. ListNodes is another call: it is read
        # before and after, and only a holder both reads agree on is compared.
        before = self._node_holders()
        holders: dict[tuple[str, int], int] = {}
        for job in self.client.list_jobs(states=["running"]):
            for g in job.gpus:
                other = holders.setdefault((g.node, g.index), job.id)
                if other != job.id:
                    self.violations.append(f"{g.node}/{g.index} held by {other} and {job.id}")
        after = self._node_holders()
        for gpu, job_id in after.items():
            held = holders.get(gpu)
            if before.get(gpu) == job_id and held is not None and held != job_id:
                self.violations.append(
                    f"{gpu}: ListNodes says job {job_id}, ListJobs says job {held}"
                )
        self.samples += 1

    def _node_holders(self) -> dict[tuple[str, int], int]:
        return {
            (n.name, g.index): g.job_id for n in self.client.nodes() for g in n.gpus if g.job_id
        }


def test_the_simulator_drives_a_64_node_daemon_through_reclaim_a_lost_node_and_resizes(
    world: World,
) -> None:
    c = world.cluster
    sim = world.sim
    assert sim is not None
    c.wait_nodes_up(NODES)
    nodes = c.client.nodes()
    assert sum(len(n.gpus) for n in nodes) == NODES * GPUS
    assert all(n.fake_gpus and n.agent_version == "nodesim" for n in nodes)
    uuids = {g.uuid for n in nodes for g in n.gpus}
    assert len(uuids) == NODES * GPUS  # every fake GPU its own UUID

    def allocation() -> dict[str, int]:
        return c.allocation()

    with Sampler(world) as sampler:
        # 1. /b borrows the whole cluster.
        b_ids = [j.id for j in c.client.submit_many([job_spec("/b", ["x"], 1, env=FOREVER)] * 540)]
        elastic = c.client.submit("/b", ["x"], 4, gpus_max=16, env=FOREVER).id
        wait_for("/b holding all 512 GPUs", lambda: allocation().get("/b") == 512, 60)

        # 2. /a comes: 200 for ever, 90 short ones that succeed, 10 that fail.
        specs = [job_spec("/a", ["x"], 1, env=FOREVER)] * 200
        specs += [job_spec("/a", ["x"], 1, env={"NODESIM_EXIT": "0"})] * 90
        specs += [job_spec("/a", ["x"], 1, env={"NODESIM_EXIT": "3"})] * 10
        a_jobs = c.client.submit_many(specs)
        a_forever = [j.id for j in a_jobs[:200]]
        a_ok, a_fail = [j.id for j in a_jobs[200:290]], [j.id for j in a_jobs[290:]]

        def ended(ids: list[int]) -> bool:
            return all(JobState.of(c.client.get_job(i).state).ended for i in ids)

        wait_for("/a's short jobs to end", lambda: ended(a_ok + a_fail), timeout_s=60)
        steady = {"/a": 200, "/b": 312}
        wait_for(f"allocation {steady}", lambda: _sub(allocation(), steady) == steady, 60)
        reclaimed = [i for i in b_ids if c.client.get_job(i).attempt > 0]
        assert reclaimed, "no job of /b was preempted for /a"

        # 3. A node with jobs of /a powers off.
        running_a = [j for j in c.client.list_jobs(consumer="/a", states=["running"])]
        victim = running_a[0].gpus[0].node
        on_victim = sorted(
            {
                j.id
                for j in c.client.list_jobs(states=["running"])
                for g in j.gpus
                if g.node == victim
            }
        )
        sim.call(sim.fleet.power_off, victim)
        wait_for(
            f"{victim} down",
            lambda: any(n.name == victim and n.state == 3 for n in c.client.nodes()),
            timeout_s=60,
        )
        steady = {"/a": 200, "/b": 304}
        wait_for(f"allocation {steady}", lambda: _sub(allocation(), steady) == steady, 60)
        for job_id in on_victim:
            job = c.client.get_job(job_id)
            if JobState.of(job.state) is JobState.RUNNING:
                assert job.attempt > 0 and all(g.node != victim for g in job.gpus), job
        sampler.check()

    # 4. Cancel what is live; every job ends as the scenario says.
    _cancel(c, [j.id for j in c.client.list_jobs(states=["pending", "running", "preempted"])])
    everyone = [*b_ids, elastic, *a_forever, *a_ok, *a_fail]
    wait_for("every job to end", lambda: ended(everyone), timeout_s=60)
    states = {i: JobState.of(c.client.get_job(i).state) for i in everyone}
    assert Counter(states[i] for i in a_ok) == {JobState.SUCCEEDED: 90}
    assert Counter(states[i] for i in a_fail) == {JobState.FAILED: 10}
    assert {states[i] for i in [*a_forever, *b_ids, elastic]} == {JobState.CANCELLED}
    assert all(c.client.get_job(i).exit_code == 3 for i in a_fail)
    wait_for("no GPU busy on the nodes", lambda: sim.call(sim.fleet.status)["busy_gpus"] == 0)

    # 5. An elastic job of /b borrows, is shrunk for /a, and grows back.
    grown = c.client.submit("/b", ["x"], 8, gpus_max=200, env=FOREVER).id
    wait_for("the elastic job at 200 GPUs", lambda: allocation().get("/b") == 200, 60)
    a_more = [j.id for j in c.client.submit_many([job_spec("/a", ["x"], 1, env=FOREVER)] * 376)]
    steady = {"/a": 376, "/b": 128}  # 504 GPUs left: /b keeps its 128, shrunk in place
    wait_for(f"allocation {steady}", lambda: _sub(allocation(), steady) == steady, 60)
    assert JobState.of(c.client.get_job(grown).state) is JobState.RUNNING
    assert sim.call(sim.fleet.status)["releases"] > 0
    _cancel(c, a_more)
    wait_for("the elastic job grown back", lambda: allocation().get("/b") == 200, 60)
    assert sim.call(sim.fleet.status)["grows"] > 0
    c.client.cancel(grown)
    wait_for("every job to end", lambda: ended([*a_more, grown]), timeout_s=60)
    assert JobState.of(c.client.get_job(grown).state) is JobState.CANCELLED

    status = sim.call(sim.fleet.status)
    assert status["refused"] == 0, status  # the daemon never sent a start on a held GPU
    assert sim.call(sim.fleet.double_booked) == []
    assert sampler.samples > 0 and sampler.violations == []
    assert status["starts"] >= 512 + 300 and status["stops"] > 0


def _cancel(c: Cluster, ids: list[int]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(c.client.cancel, ids))


def _sub(allocation: dict[str, int], keys: dict[str, int]) -> dict[str, int]:
    return {k: allocation.get(k, 0) for k in keys}
