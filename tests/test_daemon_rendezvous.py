"""Where the parts of a job on several nodes meet (MASTER_ADDR/MASTER_PORT, the elastic
store): on node rank 0, at a port of the store range no other live job there was given,
and never at a loopback address when another node of the job can be reached."""

from __future__ import annotations

from pathlib import Path

from schedulerd import core
from schedulerd.core import GpuSlot, JobId, NodeName
from schedulerd.daemon.nodes import register
from schedulerd.daemon.plans import DEFAULT_STORE_PORTS, apply_plan
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import load_policy
from schedulerd.store import GpuRecord, JobRecord, JobState, NodeRecord, Store

POLICY = "version: 1\nconsumers:\n  a: {}\n"


def _state(tmp: Path, addresses: dict[str, str]) -> ClusterState:
    store = Store(tmp / "s.db")
    state = ClusterState(store, lambda: 1000.0)
    state.set_policy(load_policy(POLICY, "p.yaml"), store.save_policy(POLICY, "p.yaml", 0.0))
    for name, address in addresses.items():
        gpus = [GpuRecord(i, f"{name}-{i}", "f", 0) for i in range(4)]
        register(state, NodeRecord(name, "default", gpus, address=address), [])
    return state


def _start_on(state: ClusterState, nodes: list[str], first_gpu: int = 0) -> JobRecord:
    job = state.submit(JobRecord(0, "/a", "u", "j", ["x"], {}, "", 4, 4, 0, JobState.PENDING, 0.0))
    slots = tuple(GpuSlot(NodeName(n), first_gpu + i) for n in nodes for i in range(2))
    started, _ = apply_plan(state, core.Plan((core.Start(JobId(job.id), slots, "t"),), {}, {}))
    assert started == [job]
    return job


def test_rank_0_is_a_node_the_others_can_reach(tmp_path: Path) -> None:
    # "head" is the daemon's machine, its agent known by 127.0.0.1; placement listed it first.
    state = _state(tmp_path, {"head": "127.0.0.1", "gpu-01": "10.0.0.11"})
    job = _start_on(state, ["head", "gpu-01"])
    ranks = {p.node: p.node_rank for p in job.parts}
    assert ranks == {"gpu-01": 0, "head": 1}
    host, port = job.store_address.rsplit(":", 1)
    assert host == "10.0.0.11" and int(port) in DEFAULT_STORE_PORTS


def test_ranks_keep_the_placement_order_when_all_are_alike(tmp_path: Path) -> None:
    state = _state(tmp_path, {"n1": "127.0.0.1", "n2": "127.0.0.1"})
    job = _start_on(state, ["n1", "n2"])
    assert {p.node: p.node_rank for p in job.parts} == {"n1": 0, "n2": 1}


def test_two_jobs_meeting_on_one_node_get_different_ports(tmp_path: Path) -> None:
    state = _state(tmp_path, {f"n{i}": f"10.0.0.{i}" for i in range(1, 5)})
    first = _start_on(state, ["n1", "n2"])
    second = _start_on(state, ["n1", "n3"], first_gpu=2)
    assert first.store_address.split(":")[0] == second.store_address.split(":")[0]
    assert first.store_address != second.store_address
    # Clear of torchrun's own defaults, which single-node jobs use unasked.
    for job in (first, second):
        assert int(job.store_address.rsplit(":", 1)[1]) not in (29400, 29500)
