"""An elastic PyTorch job (gloo on CPU) across two agents grows, is shrunk by
reclaim and grows back, in place: surviving workers keep their PIDs, no step is
lost or repeated, parameters match on every rank, the loss goes on (issue:
"Tests that must pass", first case)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from harness import running_cluster, sleep_job, wait_for

from schedulerd.api.v1 import jobs_pb2

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
POLICY = """
version: 1
consumers:
  research: {share: 1, grace: 20s}
  prod: {share: 3}
"""


def _trace(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _world_now(path: Path) -> int:
    rows = _trace(path)
    return int(rows[-1]["world"]) if rows else 0


def test_elastic_job_grows_shrinks_for_a_fairer_consumer_and_grows_back(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    with running_cluster(tmp_path, POLICY, {"n1": 2, "n2": 2}) as cluster:
        c = cluster.client
        job = c.submit(
            "/research",
            [
                sys.executable,
                str(ROOT / "examples" / "elastic_train.py"),
                "--steps",
                "100000",
                "--step-time",
                "0.05",
                "--trace",
                str(trace),
            ],
            gpus=1,
            gpus_max=4,
            env={"GLOO_SOCKET_IFNAME": "lo"},
            name="elastic",
        )
        # Alone, it grows to 4 workers over both nodes.
        wait_for("the job to train on 4 workers", lambda: _world_now(trace) == 4, timeout_s=90)
        nodes = {g.node for g in c.get_job(job.id).gpus}
        assert nodes == {"n1", "n2"}

        # /prod (entitled to 3 of 4) submits: reclaim shrinks the elastic job to 1.
        prod = [c.submit("/prod", sleep_job(6), name="prod").id for _ in range(3)]
        wait_for(
            "prod's jobs to run",
            lambda: all(c.get_job(i).state == jobs_pb2.RUNNING for i in prod),
            timeout_s=60,
        )
        assert _world_now(trace) == 1
        assert len(c.get_job(job.id).gpus) == 1

        # When prod's work is done, the elastic job grows back.
        wait_for(
            "prod to finish",
            lambda: all(c.get_job(i).state == jobs_pb2.SUCCEEDED for i in prod),
            timeout_s=60,
        )
        wait_for("the job back on 4 workers", lambda: _world_now(trace) == 4, timeout_s=90)
        history = [e.kind for e in c.get_job(job.id).history]
        assert "shrink-requested" in history and "shrunk" in history and "grown" in history
        c.cancel(job.id)
        wait_for("the job to end", lambda: c.get_job(job.id).state == jobs_pb2.CANCELLED)

    rows = _trace(trace)
    by_step: dict[int, list[dict[str, float]]] = defaultdict(list)
    for r in rows:
        by_step[int(r["step"])].append(r)
    steps = sorted(by_step)
    # No step lost or repeated: every step from the first to the last, each once per rank.
    assert steps == list(range(steps[0], steps[-1] + 1))
    for step in steps:
        ranks = sorted(int(r["rank"]) for r in by_step[step])
        world = {int(r["world"]) for r in by_step[step]}
        assert len(world) == 1 and ranks == list(range(world.pop())), (step, by_step[step])
        # Parameters identical on every rank after every step (and so after each resize).
        assert len({r["checksum"] for r in by_step[step]}) == 1, by_step[step]
    worlds = [int(by_step[s][0]["world"]) for s in steps]
    assert 4 in worlds and 1 in worlds[worlds.index(4) :]
    assert 4 in worlds[worlds.index(4) + worlds[worlds.index(4) :].index(1) :]
    # Surviving workers were never restarted: one PID per worker id, all along.
    pids: dict[int, set[int]] = defaultdict(set)
    for r in rows:
        pids[int(r["worker"])].add(int(r["pid"]))
    assert all(len(p) == 1 for p in pids.values()), pids
    # The loss goes on from where it was: after each resize it is close to the loss
    # just before, far from the untrained loss of the first step. (Each rank logs
    # the loss of its shard; their mean is the global batch's.)
    loss = [sum(float(r["loss"]) for r in by_step[s]) / len(by_step[s]) for s in steps]
    for k in range(1, len(steps)):
        if worlds[k] != worlds[k - 1]:
            assert loss[k] < 0.5 * loss[0] or loss[k] <= 1.5 * loss[k - 1], (k, loss[k - 3 : k + 3])


def test_elastic_job_over_two_agents_shrinks_then_finishes_succeeded(tmp_path: Path) -> None:
    """Its training ends (worker 0 exits 0) while GPUs are idle: it is never grown again,
    no joiner is started for it, and it ends SUCCEEDED (docs/fencing.md: elastic end)."""
    trace = tmp_path / "trace.jsonl"
    with running_cluster(tmp_path, POLICY, {"n1": 2, "n2": 2}) as cluster:
        c = cluster.client
        job = c.submit(
            "/research",
            [
                sys.executable,
                str(ROOT / "examples" / "elastic_train.py"),
                "--steps",
                "300",
                "--step-time",
                "0.05",
                "--trace",
                str(trace),
            ],
            gpus=1,
            gpus_max=4,
            env={"GLOO_SOCKET_IFNAME": "lo"},
            name="elastic-end",
        )
        wait_for("the job to train on 4 workers", lambda: _world_now(trace) == 4, timeout_s=90)
        assert {g.node for g in c.get_job(job.id).gpus} == {"n1", "n2"}
        prod = [c.submit("/prod", sleep_job(2), name="prod").id]
        wait_for("the shrink", lambda: _world_now(trace) <= 3, timeout_s=60)
        wait_for(
            "prod to finish",
            lambda: all(c.get_job(i).state == jobs_pb2.SUCCEEDED for i in prod),
            timeout_s=60,
        )
        done = wait_for(
            "the job to end",
            lambda: (
                (j := c.get_job(job.id)).state not in (jobs_pb2.PENDING, jobs_pb2.RUNNING) and j
            ),
            timeout_s=120,
        )
        assert done.state == jobs_pb2.SUCCEEDED, (done.reason, [e.kind for e in done.history])
        kinds = [e.kind for e in done.history]
        assert "shrunk" in kinds
        if "ending" in kinds:  # the end was seen before the last part exited
            assert "grown" not in kinds[kinds.index("ending") :]
    steps = {int(r["step"]) for r in _trace(trace)}
    assert max(steps) == 300  # the last of its 300 steps (numbered from 1)
