"""End to end: the daemon and two agents (4 fake GPUs each) on 127.0.0.1, real
processes, real gRPC, real SQLite (issue: "Tests that must pass")."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from harness import running_cluster, sleep_job, wait_for

from schedulerd.client import ClientError

POLICY = """
version: 1
consumers:
  a: {share: 1}
  b: {share: 3}
  c: {owned: 4, share: 0}
"""
TWO_AGENTS = {"n1": 4, "n2": 4}


def _running(cluster, consumer: str) -> int:  # type: ignore[no-untyped-def]
    return len(cluster.client.list_jobs(consumer, ["RUNNING"]))


def test_shares_1_to_3_converge_to_2_and_6(tmp_path: Path) -> None:
    with running_cluster(tmp_path, POLICY, TWO_AGENTS) as cluster:
        # /a submits first and, alone, borrows the whole cluster (work
        # conservation); without preemption it converges as its jobs end.
        for _ in range(30):
            cluster.client.submit("/a", sleep_job(3), name="a-backlog")
        for _ in range(40):
            cluster.client.submit("/b", sleep_job(3), name="b-backlog")

        wait_for(
            "the 2:6 split",
            lambda: cluster.allocation().get("/a") == 2 and cluster.allocation().get("/b") == 6,
        )
        # Through two generations of 3-second jobs, while both still have
        # backlogs: never above the entitled 2 and 6, and back at 2:6 each time.
        samples = []
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            alloc = cluster.allocation()
            samples.append((alloc["/a"], alloc["/b"]))
            time.sleep(0.25)
        assert all(a <= 2 and b <= 6 for a, b in samples), samples
        assert samples.count((2, 6)) >= len(samples) // 2, samples
        finished = cluster.client.list_jobs("/a", ["SUCCEEDED"]) + cluster.client.list_jobs(
            "/b", ["SUCCEEDED"]
        )
        assert len(finished) >= 14, "jobs must have finished and been replaced meanwhile"

        consumers = {c.path: c for c in cluster.client.consumers().consumers}
        assert consumers["/a"].entitlement == pytest.approx(2.0)
        assert consumers["/b"].entitlement == pytest.approx(6.0)
        waiting = cluster.client.list_jobs("/a", ["PENDING"])
        assert waiting and all(j.reason.startswith("waiting for 1 GPU") for j in waiting)


def test_owner_submitting_late_gets_its_owned_gpus_as_they_free_up(tmp_path: Path) -> None:
    with running_cluster(tmp_path, POLICY, TWO_AGENTS) as cluster:
        for _ in range(10):
            cluster.client.submit("/a", sleep_job(2))
        for _ in range(30):
            cluster.client.submit("/b", sleep_job(2))
        wait_for(
            "a and b to fill the cluster",
            lambda: sum(cluster.allocation().get(p, 0) for p in ("/a", "/b")) == 8,
        )

        late = [cluster.client.submit("/c", sleep_job(60), name="owner").id for _ in range(4)]
        # Nobody is preempted (reclaim is a later release): /c, the most starved
        # consumer, gets each GPU that frees up until it holds its owned 4.
        wait_for("/c to run its 4 jobs", lambda: _running(cluster, "/c") == 4, timeout_s=40)
        consumers = {c.path: c for c in cluster.client.consumers().consumers}
        assert consumers["/c"].entitlement == pytest.approx(4.0)
        assert consumers["/c"].allocation == 4
        # Then a and b share the other 4 by 1:3.
        wait_for(
            "a:b at 1:3 beside c",
            lambda: (cluster.allocation()["/a"], cluster.allocation()["/b"]) == (1, 3),
        )
        for job_id in late:
            assert cluster.client.get_job(job_id).state == 2  # RUNNING


def test_job_that_can_never_fit_is_refused_at_submit(tmp_path: Path) -> None:
    policy = POLICY + "  small: {share: 1, limit: 2}\n"
    with running_cluster(tmp_path, policy, TWO_AGENTS) as cluster:
        with pytest.raises(ClientError) as too_big:
            cluster.client.submit("/a", sleep_job(1), gpus=9)
        assert too_big.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "can never fit" in too_big.value.details
        assert "8 GPUs on 2 node(s)" in too_big.value.details

        with pytest.raises(ClientError) as over_limit:
            cluster.client.submit("/small", sleep_job(1), gpus=3)
        assert "/small has a limit of 2 GPUs" in over_limit.value.details

        with pytest.raises(ClientError) as unknown:
            cluster.client.submit("/nope", sleep_job(1))
        assert "does not exist" in unknown.value.details
        # Nothing was queued.
        assert cluster.client.list_jobs() == []
