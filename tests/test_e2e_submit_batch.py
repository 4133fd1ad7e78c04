"""SubmitJobs: several jobs in one call and one SQLite transaction, all or none
(real daemon, real gRPC, real store; the one node is drained so nothing starts)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from harness import Cluster, running_cluster, sleep_job

from schedulerd.api.v1 import jobs_pb2
from schedulerd.client import ClientError, job_spec

POLICY = """
version: 1
consumers:
  lab:
    consumers:
      x: {share: 1}
      y: {share: 1, limit: 2}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("batch"), POLICY, {"solo": 4}) as c:
        c.client.drain("solo", "batch tests: nothing starts")
        yield c


def _ids(cluster: Cluster) -> list[int]:
    return sorted(j.id for j in cluster.client.list_jobs())


def test_a_batch_is_accepted_whole_in_order(cluster: Cluster) -> None:
    specs = [
        job_spec("/lab/x", sleep_job(60), 1, user="ana", name="a"),
        job_spec("/lab/y", sleep_job(60), 2, user="bo", name="b", priority=3),
        job_spec("/lab/x", sleep_job(60), 1, gpus_max=4, user="ana", name="c"),
    ]
    jobs = cluster.client.submit_many(specs)
    assert [j.spec.name for j in jobs] == ["a", "b", "c"]
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)  # queue order = request order
    assert all(j.state == jobs_pb2.PENDING for j in jobs)
    assert (jobs[1].spec.gpus.min, jobs[1].spec.priority) == (2, 3)
    assert (jobs[2].spec.gpus.min, jobs[2].spec.gpus.max) == (1, 4)
    for j in jobs:
        stored = cluster.client.get_job(j.id)
        assert stored.state == jobs_pb2.PENDING
        assert [e.kind for e in stored.history] == ["submitted"]
    assert cluster.client.submit_many([]) == []


def test_a_refused_job_refuses_the_batch_and_is_named(cluster: Cluster) -> None:
    before = _ids(cluster)
    specs = [
        job_spec("/lab/x", sleep_job(60), 1, user="ana"),
        job_spec("/lab/x", sleep_job(60), 1, user="ana"),
        job_spec("/lab/y", sleep_job(60), 3, user="bo"),  # above /lab/y's limit of 2
        job_spec("/lab/x", sleep_job(60), 1, user="ana"),
    ]
    with pytest.raises(ClientError) as refused:
        cluster.client.submit_many(specs)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details.startswith("job 2 of 4: ")
    assert "limit" in refused.value.details
    assert "no job of this batch was submitted" in refused.value.details
    assert _ids(cluster) == before

    unknown = [job_spec("/lab/nope", sleep_job(60), 1, user="ana"), *specs[:2]]
    with pytest.raises(ClientError) as refused:
        cluster.client.submit_many(unknown)
    assert refused.value.details.startswith("job 0 of 3: ")
    assert "/lab/nope" in refused.value.details
    assert _ids(cluster) == before


def test_a_malformed_spec_refuses_the_batch_and_is_named(cluster: Cluster) -> None:
    before = _ids(cluster)
    bad = jobs_pb2.JobSpec(consumer="/lab/x", command=[], gpus=jobs_pb2.GpuRequest(min=1))
    with pytest.raises(ClientError) as refused:
        cluster.client.submit_many([job_spec("/lab/x", ["true"], 1, user="ana"), bad])
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details.startswith("job 1 of 2: spec.command")
    assert _ids(cluster) == before


def test_an_accepted_batch_survives_a_sigkill(cluster: Cluster) -> None:
    jobs = cluster.client.submit_many(
        [job_spec("/lab/x", sleep_job(60), 1, user="ana", name=f"k{i}") for i in range(20)]
    )
    cluster.kill_daemon()
    cluster.start_daemon()
    for j in jobs:
        assert cluster.client.get_job(j.id).state == jobs_pb2.PENDING
    assert {j.id for j in jobs} <= set(_ids(cluster))


def test_unary_submit_still_works_beside_batches(cluster: Cluster) -> None:
    job = cluster.client.submit("/lab/x", sleep_job(60), 1, user="ana")
    assert job.state == jobs_pb2.PENDING
