"""Two pools end to end (issue 13: pools and GPU types; docs/pools.md): agents of an A100
and an H100 node, a policy with terms per pool. A job for H100 waits for H100 while A100
GPUs are free, reclaim takes GPUs back inside the pool only, and the entitlements per pool
are the worked example's."""

from __future__ import annotations

import os
from pathlib import Path

from harness import Cluster, sleep_job, wait_for

from schedulerd.api.v1 import jobs_pb2
from schedulerd.client import job_spec

# a100: SEMANTICS' worked example (owned 4/4/0, shares 1:3:1); h100: /b owns 8 there.
POLICY = """
version: 1
consumers:
  a: {owned: 4, share: 1, grace: 1s}
  b: {owned: 4, share: 3, grace: 1s, pools: {h100: {owned: 8, share: 1, limit: 8}}}
  c: {owned: 0, share: 1, grace: 3s}
"""


def test_two_pools_wait_reclaim_and_entitle_per_pool(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, POLICY)
    # Names of this run only: an agent's cgroups are named by its node.
    a100, h100 = f"a100-{os.getpid()}", f"h100-{os.getpid()}"
    try:
        cluster.start_daemon()
        cluster.start_agent(a100, 16, ("--pool", "a100"))
        cluster.start_agent(h100, 16, ("--pool", "h100"))
        cluster.wait_nodes_up(2)
        c = cluster.client
        assert {n.name: n.pool for n in c.nodes()} == {a100: "a100", h100: "h100"}

        # /c borrows all of h100 and half of a100.
        specs = [job_spec("/c", sleep_job(300), 1, pool="h100") for _ in range(16)]
        specs += [job_spec("/c", sleep_job(300), 1, pool="a100") for _ in range(8)]
        borrowers = c.submit_many(specs)
        wait_for(
            "/c's 24 jobs to run",
            lambda: all(c.get_job(j.id).state == jobs_pb2.RUNNING for j in borrowers),
        )

        # /b's job for H100 does not take the 8 free A100 GPUs: it waits for H100, and
        # reclaim frees 4 there, taking back what /c borrowed in that pool only.
        want = c.submit("/b", sleep_job(300), 4, pool="h100")
        # While /c's grace runs, it waits, and says where.
        wait_for(
            "/b's job to wait in pool h100",
            lambda: "in pool h100" in c.get_job(want.id).reason,
            every_s=0.05,
        )
        started = wait_for(
            "/b's H100 job to start",
            lambda: (j := c.get_job(want.id)).state == jobs_pb2.RUNNING and j,
            timeout_s=30,
        )
        assert {g.node for g in started.gpus} == {h100}
        by_pool = {j.id: ("h100" if i < 16 else "a100") for i, j in enumerate(borrowers)}
        states = {j.id: c.get_job(j.id) for j in borrowers}
        taken = [i for i, j in states.items() if j.attempt > 0 or j.state != jobs_pb2.RUNNING]
        assert len(taken) >= 4
        assert {by_pool[i] for i in taken} == {"h100"}, "reclaim left its pool"
        assert all(
            states[i].state == jobs_pb2.RUNNING and states[i].attempt == 0
            for i, p in by_pool.items()
            if p == "a100"
        )

        # Backlogs for a100 in every consumer: its entitlements are the worked example's.
        backlog = [
            job_spec(consumer, sleep_job(300), 1, pool="a100")
            for consumer in ("/a", "/b", "/c")
            for _ in range(20)
        ]
        c.submit_many(backlog)

        def entitlements(pool: str) -> dict[str, float]:
            out = {}
            for status in c.consumers().consumers:
                for p in status.pools:
                    if p.pool == pool:
                        out[status.path] = round(p.entitlement, 3)
            return out

        wait_for(
            "a100's entitlements to be the worked example's",
            lambda: [entitlements("a100").get(p) for p in ("/a", "/b", "/c")] == [5.6, 8.8, 1.6],
        )
        # h100: /b's job (4 of its 8 owned), the rest to /c, which asks for 16.
        h = entitlements("h100")
        assert (h["/a"], h["/b"], h["/c"]) == (0.0, 4.0, 12.0)
        total = {s.path: round(s.entitlement, 3) for s in c.consumers().consumers}
        assert total["/b"] == 12.8
    finally:
        cluster.stop()


def test_a_job_for_a_pool_no_node_has_is_refused_with_the_pools_named(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, POLICY)
    node = f"a100-{os.getpid()}"
    try:
        cluster.start_daemon()
        cluster.start_agent(node, 2, ("--pool", "a100"))
        cluster.wait_nodes_up(1)
        try:
            cluster.client.submit("/a", sleep_job(1), 1, pool="h100")
        except Exception as e:  # ClientError, INVALID_ARGUMENT or FAILED_PRECONDITION
            assert "no node has pool or GPU type 'h100'" in str(e)
            assert "a100" in str(e)
        else:
            raise AssertionError("a job for a pool no node has was queued")
    finally:
        cluster.stop()
