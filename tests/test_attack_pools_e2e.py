"""An outside reviewer's end-to-end attacks on pools and windows (docs/pools.md,
docs/policy.md): a real daemon and agents with fake GPUs. A node that changes pool
under a running job; ApplyPolicy's `at` misused."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import pytest
from harness import Cluster, sleep_job, wait_for

from schedulerd.api.v1 import jobs_pb2
from schedulerd.client import ClientError

POLICY = """
version: 1
consumers:
  a: {grace: 1s}
  b: {grace: 1s}
"""


def test_a_node_that_changes_pool_under_a_running_job(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, POLICY)
    n1, n2 = f"rp1-{os.getpid()}", f"rp2-{os.getpid()}"
    try:
        cluster.start_daemon()
        cluster.start_agent(n1, 4, ("--pool", "x"))
        cluster.start_agent(n2, 4, ("--pool", "x"))
        cluster.wait_nodes_up(2)
        c = cluster.client
        big = c.submit("/a", sleep_job(600), 8)
        line = f"job {big.id} attempt 0 started"

        def started(node: str) -> bool:
            return line in cluster.agent_log(node)

        wait_for("both parts to start", lambda: started(n1) and started(n2))
        # n2's agent restarts with another pool; it adopts the part it runs.
        cluster.agents[n2].send_signal(signal.SIGKILL)
        cluster.agents[n2].wait(10)
        cluster.start_agent(n2, 4, ("--pool", "y"))
        wait_for(
            "n2 back in pool y",
            lambda: {n.name: (n.pool, n.state) for n in c.nodes()}.get(n2) == ("y", 1),
        )
        assert c.get_job(big.id).state == jobs_pb2.RUNNING
        want = c.submit("/b", sleep_job(600), 4, pool="y")

        def held_in(pool: str) -> int:
            status = next(s for s in c.consumers().consumers if s.path == "/a")
            return sum(p.allocation for p in status.pools if p.pool == pool)

        def settled() -> bool:
            waiting = c.get_job(want.id)
            return (
                waiting.state == jobs_pb2.PENDING
                and not waiting.reason.startswith("submitted")
                and held_in("x") == 8
                and held_in("y") == 0
            )

        # Found: the waiting job kept "submitted; waiting for the next scheduling cycle",
        # 'started' every cycle on GPUs the big job holds (dropped by apply_plan). Now the
        # big job counts where it started (pool x) and its GPUs in y are offered to no one.
        wait_for("a reason for the waiting job; /a's GPUs counted in pool x", settled, 5)
        assert "in pool y" in c.get_job(want.id).reason
    finally:
        cluster.stop()


def test_apply_policy_at_misuse_changes_nothing(tmp_path: Path) -> None:
    """Held: `at` without dry_run, before 1970, or after 9998 is INVALID_ARGUMENT, and
    the policy in force keeps its version."""
    cluster = Cluster(tmp_path, POLICY)
    node = f"at-{os.getpid()}"
    try:
        cluster.start_daemon()
        cluster.start_agent(node, 2)
        cluster.wait_nodes_up(1)
        c = cluster.client
        version = c.get_policy().version
        text = POLICY + "  c:\n    windows:\n      - when: daily 00:00-12:00\n        owned: 1\n"
        for at, dry in ((1_000_000.0, False), (-5.0, True), (253_400_000_000.0, True)):
            with pytest.raises(ClientError) as err:
                c.apply_policy(text, "x.yaml", dry_run=dry, at=at)
            assert "at:" in err.value.details
            assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert c.get_policy().version == version
        # Dry runs at two times give the window's terms or not, and apply nothing.
        inside = c.apply_policy(text, "x.yaml", dry_run=True, at=6 * 3600.0)
        outside = c.apply_policy(text, "x.yaml", dry_run=True, at=18 * 3600.0)
        owned = {s.path: s.owned for s in inside.consumers}
        assert owned["/c"] == 1
        assert {s.path: s.owned for s in outside.consumers}["/c"] == 0
        assert not inside.applied and c.get_policy().version == version
    finally:
        cluster.stop()
