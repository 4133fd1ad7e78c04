"""The API and `schedctl` end to end on one daemon with one fake-GPU agent."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import Cluster, running_cluster, sleep_job, wait_for

from schedulerd.api.v1 import jobs_pb2
from schedulerd.client import ClientError

POLICY = """
version: 1
consumers:
  lab:
    consumers:
      x: {share: 1, grace: 2s}
      y: {share: 1}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("api"), POLICY, {"solo": 4}) as c:
        yield c


def _ended(cluster: Cluster, job_id: int) -> jobs_pb2.Job | None:
    job = cluster.client.get_job(job_id)
    return job if job.state not in (jobs_pb2.PENDING, jobs_pb2.RUNNING) else None


def test_health_and_reflection_are_served(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="schedulerd.api.v1.Scheduler"), timeout=5
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {s.name for s in reply.list_services_response.service}
    assert {
        "schedulerd.api.v1.Scheduler",
        "schedulerd.api.v1.Admin",
        "schedulerd.api.v1.AgentService",
        "grpc.health.v1.Health",
    } <= names


def test_cancel_running_job_sends_sigterm_and_ends_cancelled(cluster: Cluster) -> None:
    trap = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True),"
        " sys.exit(0)))\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    job = cluster.client.submit("/lab/x", [sys.executable, "-c", trap])
    wait_for(
        "it to print ready", lambda: b"ready" in b"".join(cluster.client.logs(job.id, follow=False))
    )
    cancelled = cluster.client.cancel(job.id)
    assert cancelled.cancel_requested
    done = wait_for("the cancel to finish", lambda: _ended(cluster, job.id))
    assert done.state == jobs_pb2.CANCELLED
    assert b"got SIGTERM" in b"".join(cluster.client.logs(job.id, follow=False))
    kinds = [e.kind for e in cluster.client.get_job(job.id).history]
    assert kinds == ["submitted", "started", "cancel-requested", "cancelled"]


def test_cancel_of_a_job_ignoring_sigterm_kills_it_after_the_grace(cluster: Cluster) -> None:
    stubborn = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(60)"
    )
    job = cluster.client.submit("/lab/x", [sys.executable, "-c", stubborn])
    wait_for(
        "it to ignore SIGTERM",
        lambda: b"ready" in b"".join(cluster.client.logs(job.id, follow=False)),
    )
    cluster.client.cancel(job.id)
    done = wait_for("SIGKILL after the 2 s grace", lambda: _ended(cluster, job.id), timeout_s=20)
    assert done.state == jobs_pb2.CANCELLED and done.exit_code == -9


def test_pending_job_cancelled_at_once_and_watch_streams_changes(cluster: Cluster) -> None:
    seen: list[tuple[int, int]] = []
    watcher = cluster.client.__class__(cluster.address)
    ready = threading.Event()

    def watch() -> None:
        for job in watcher.watch(consumer="/lab/y", include_current=False):
            seen.append((job.id, job.state))
            ready.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    blocker = cluster.client.submit("/lab/y", sleep_job(30), gpus=4)
    ready.wait(10)
    waiting = cluster.client.submit("/lab/y", sleep_job(1), gpus=2)
    wait_for(
        "a reason",
        lambda: "waiting for 2 GPUs on one node" in cluster.client.get_job(waiting.id).reason,
    )
    assert cluster.client.cancel(waiting.id).state == jobs_pb2.CANCELLED
    cluster.client.cancel(blocker.id)
    wait_for("the blocker to end", lambda: _ended(cluster, blocker.id))
    wait_for("the watch to see it", lambda: (blocker.id, jobs_pb2.CANCELLED) in seen)
    watcher.close()
    # The stream may open after the blocker's submission; everything after is seen.
    assert (blocker.id, jobs_pb2.RUNNING) in seen
    assert [s for i, s in seen if i == waiting.id] == [jobs_pb2.PENDING, jobs_pb2.CANCELLED]


def test_logs_follow_streams_until_the_job_ends(cluster: Cluster) -> None:
    code = "import time\nfor i in range(5):\n    print('line', i, flush=True); time.sleep(0.2)"
    job = cluster.client.submit("/lab/y", [sys.executable, "-c", code])
    text = b"".join(cluster.client.logs(job.id, follow=True)).decode()
    assert all(f"line {i}" in text for i in range(5))
    assert _ended(cluster, job.id) is not None


def test_drained_node_takes_no_new_jobs(cluster: Cluster) -> None:
    cluster.client.drain("solo", "maintenance")
    try:
        job = cluster.client.submit("/lab/y", sleep_job(0.1))
        wait_for("a reason", lambda: "schedulable" in cluster.client.get_job(job.id).reason)
        node = cluster.client.nodes()[0]
        assert node.drained and node.drain_reason == "maintenance"
    finally:
        cluster.client.undrain("solo")
    assert wait_for("the job to run after undrain", lambda: _ended(cluster, job.id)).exit_code == 0


def test_invalid_policy_is_refused_with_line_and_key_and_changes_nothing(cluster: Cluster) -> None:
    before = cluster.client.get_policy()
    bad = "version: 1\nconsumers:\n  lab:\n    shares: 2\n"
    with pytest.raises(ClientError) as err:
        cluster.client.apply_policy(bad, "bad.yaml")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad.yaml:4: consumers.lab.shares" in err.value.details
    assert "did you mean 'share'" in err.value.details
    assert cluster.client.get_policy().version == before.version


def test_dry_run_shows_entitlements_without_applying(cluster: Cluster) -> None:
    before = cluster.client.get_policy()
    job = cluster.client.submit("/lab/y", sleep_job(20), gpus=3)
    try:
        new = POLICY.replace("x: {share: 1, grace: 2s}", "x: {share: 1, owned: 1, grace: 2s}")
        resp = cluster.client.apply_policy(new, "new.yaml", dry_run=True)
        assert not resp.applied
        by_path = {c.path: c for c in resp.consumers}
        assert by_path["/lab/x"].owned == 1 and by_path["/lab/y"].demand == 3
        assert cluster.client.get_policy().version == before.version
    finally:
        cluster.client.cancel(job.id)
        wait_for("the cancel to finish", lambda: _ended(cluster, job.id))


def test_policy_dropping_a_consumer_with_jobs_is_refused(cluster: Cluster) -> None:
    job = cluster.client.submit("/lab/y", sleep_job(20))
    try:
        without_y = "version: 1\nconsumers:\n  lab:\n    consumers:\n      x: {share: 1}\n"
        with pytest.raises(ClientError) as err:
            cluster.client.apply_policy(without_y, "shrunk.yaml")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "/lab/y (1 jobs)" in err.value.details
    finally:
        cluster.client.cancel(job.id)
        wait_for("the cancel to finish", lambda: _ended(cluster, job.id))


def _schedctl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "schedulerd.cli", "--daemon", cluster.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_schedctl_submit_show_jobs_consumers_nodes(cluster: Cluster) -> None:
    out = _schedctl(
        cluster,
        "submit",
        "--consumer",
        "/lab/x",
        "--gpus",
        "1",
        "--wait",
        "--",
        sys.executable,
        "-c",
        "raise SystemExit(4)",
    )
    assert out.returncode == 4, out.stderr
    job_id = int(out.stdout.split()[2])
    shown = _schedctl(cluster, "show", str(job_id))
    assert "state:      FAILED" in shown.stdout and "exit code:  4" in shown.stdout
    listed = _schedctl(cluster, "jobs", "--all", "--json")
    assert f'"id": "{job_id}"' in listed.stdout
    consumers = _schedctl(cluster, "consumers")
    assert consumers.returncode == 0 and "ENTITLED" in consumers.stdout
    assert "\nlab " in consumers.stdout and "\n  x " in consumers.stdout  # an indented tree
    nodes = _schedctl(cluster, "nodes")
    assert "solo" in nodes.stdout and "(fake)" in nodes.stdout
    refused = _schedctl(cluster, "submit", "--consumer", "/lab", "--", "true")
    assert refused.returncode == 1 and "is a parent" in refused.stderr


def test_schedctl_policy_validate_points_at_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("version: 1\nconsumers:\n  a:\n    owned: -1\n")
    out = subprocess.run(
        [sys.executable, "-m", "schedulerd.cli", "policy", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert f"{bad}:4: consumers.a.owned" in out.stderr
    good = Path(__file__).parent.parent / "policies" / "multi-team.yaml"
    ok = subprocess.run(
        [sys.executable, "-m", "schedulerd.cli", "policy", "validate", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "valid" in ok.stdout
