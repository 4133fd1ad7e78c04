"""A small client library for schedulerd, used by `schedctl` and by any program
that wants to submit or watch jobs.

    from schedulerd.client import Client
    with Client("127.0.0.1:50051") as c:
        job = c.submit("/research/vision", ["python", "train.py"], gpus=2)
        print(c.get_job(job.id).reason)
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from schedulerd.api.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
)

DEFAULT_ADDRESS = "127.0.0.1:50051"


class ClientError(RuntimeError):
    """The daemon refused or failed a call; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One unary call; gRPC errors become ClientError with the daemon's words."""
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        raise ClientError(e.code(), e.details() or str(e.code())) from None


def job_spec(
    consumer: str,
    command: Sequence[str],
    gpus: int = 1,
    *,
    gpus_max: int | None = None,
    user: str | None = None,
    name: str = "",
    env: Mapping[str, str] | None = None,
    working_dir: str = "",
    priority: int = 0,
) -> jobs_pb2.JobSpec:
    """A job as `Client.submit` takes it, for `Client.submit_many`."""
    return jobs_pb2.JobSpec(
        consumer=consumer,
        user=user or getpass.getuser(),
        name=name,
        command=list(command),
        env=dict(env or {}),
        working_dir=working_dir,
        gpus=jobs_pb2.GpuRequest(min=gpus, max=gpus_max or gpus),
        priority=priority,
    )


class Client:
    def __init__(self, address: str = DEFAULT_ADDRESS, timeout_s: float = 30.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(address)
        self.jobs = jobs_pb2_grpc.SchedulerStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.experiments = experiments_pb2_grpc.ExperimentsStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    # -- jobs ---------------------------------------------------------------

    def submit(
        self,
        consumer: str,
        command: Sequence[str],
        gpus: int = 1,
        *,
        gpus_max: int | None = None,
        user: str | None = None,
        name: str = "",
        env: Mapping[str, str] | None = None,
        working_dir: str = "",
        priority: int = 0,
    ) -> jobs_pb2.Job:
        spec = job_spec(
            consumer,
            command,
            gpus,
            gpus_max=gpus_max,
            user=user,
            name=name,
            env=env,
            working_dir=working_dir,
            priority=priority,
        )
        req = jobs_pb2.SubmitJobRequest(spec=spec)
        result: jobs_pb2.Job = _call(self.jobs.SubmitJob, req, timeout=self.timeout_s).job
        return result

    def submit_many(self, specs: Iterable[jobs_pb2.JobSpec]) -> list[jobs_pb2.Job]:
        """Submit several jobs (`job_spec(...)` builds each) in one call and one
        transaction: all are accepted, or none is and ClientError says which job
        ("job I of N", I from 0) was refused and why."""
        req = jobs_pb2.SubmitJobsRequest(jobs=[jobs_pb2.SubmitJobRequest(spec=s) for s in specs])
        return list(_call(self.jobs.SubmitJobs, req, timeout=self.timeout_s).jobs)

    def get_job(self, job_id: int) -> jobs_pb2.Job:
        result: jobs_pb2.Job = _call(
            self.jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id), timeout=self.timeout_s
        )
        return result

    def list_jobs(
        self,
        consumer: str = "",
        states: Sequence[str] = (),
        user: str = "",
        limit: int = 0,
    ) -> list[jobs_pb2.Job]:
        req = jobs_pb2.ListJobsRequest(
            consumer=consumer,
            states=[jobs_pb2.JobState.Value(s.upper()) for s in states],
            user=user,
            limit=limit,
        )
        return list(_call(self.jobs.ListJobs, req, timeout=self.timeout_s).jobs)

    def cancel(self, job_id: int, user: str | None = None) -> jobs_pb2.Job:
        req = jobs_pb2.CancelJobRequest(id=job_id, user=user or getpass.getuser())
        result: jobs_pb2.Job = _call(self.jobs.CancelJob, req, timeout=self.timeout_s)
        return result

    def watch(
        self, consumer: str = "", ids: Sequence[int] = (), include_current: bool = True
    ) -> Iterator[jobs_pb2.Job]:
        """Job updates as they happen; iterate, and `close()` the client to stop."""
        req = jobs_pb2.WatchJobsRequest(
            consumer=consumer, ids=list(ids), include_current=include_current
        )
        try:
            for update in self.jobs.WatchJobs(req):
                yield update.job
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise ClientError(e.code(), e.details() or "") from None

    def logs(self, job_id: int, follow: bool = True, offset: int = 0) -> Iterator[bytes]:
        """The job's output, every part's chunks as they come (see `log_chunks`)."""
        for chunk in self.log_chunks(job_id, follow, offset):
            yield chunk.data

    def log_chunks(
        self, job_id: int, follow: bool = True, offset: int = 0
    ) -> Iterator[jobs_pb2.LogChunk]:
        """Chunks of the job's logs, each naming its node and node rank (a job that
        spans nodes has one log per node)."""
        req = jobs_pb2.StreamLogsRequest(id=job_id, follow=follow, offset=offset)
        try:
            yield from self.jobs.StreamLogs(req)
        except grpc.RpcError as e:
            raise ClientError(e.code(), e.details() or "") from None

    # -- admin --------------------------------------------------------------

    def get_policy(self) -> admin_pb2.Policy:
        result: admin_pb2.Policy = _call(
            self.admin.GetPolicy, admin_pb2.GetPolicyRequest(), timeout=self.timeout_s
        )
        return result

    def apply_policy(
        self, text: str, source_name: str = "", dry_run: bool = False
    ) -> admin_pb2.ApplyPolicyResponse:
        req = admin_pb2.ApplyPolicyRequest(text=text, source_name=source_name, dry_run=dry_run)
        result: admin_pb2.ApplyPolicyResponse = _call(
            self.admin.ApplyPolicy, req, timeout=self.timeout_s
        )
        return result

    def consumers(self) -> admin_pb2.ListConsumersResponse:
        req = admin_pb2.ListConsumersRequest()
        result: admin_pb2.ListConsumersResponse = _call(
            self.admin.ListConsumers, req, timeout=self.timeout_s
        )
        return result

    def nodes(self) -> list[admin_pb2.Node]:
        req = admin_pb2.ListNodesRequest()
        return list(_call(self.admin.ListNodes, req, timeout=self.timeout_s).nodes)

    def drain(self, node: str, reason: str = "") -> admin_pb2.Node:
        req = admin_pb2.DrainNodeRequest(node=node, reason=reason)
        result: admin_pb2.Node = _call(self.admin.DrainNode, req, timeout=self.timeout_s)
        return result

    def forget_node(self, node: str) -> admin_pb2.ForgetNodeResponse:
        """Declare a node powered off: its jobs are requeued, its fences lifted."""
        req = admin_pb2.ForgetNodeRequest(node=node)
        result: admin_pb2.ForgetNodeResponse = _call(
            self.admin.ForgetNode, req, timeout=self.timeout_s
        )
        return result

    def undrain(self, node: str) -> admin_pb2.Node:
        req = admin_pb2.UndrainNodeRequest(node=node)
        result: admin_pb2.Node = _call(self.admin.UndrainNode, req, timeout=self.timeout_s)
        return result

    # -- experiments (docs/hpo.md) ------------------------------------------

    def create_experiment(self, spec: experiments_pb2.ExperimentSpec) -> experiments_pb2.Experiment:
        """Start a search; `schedulerd.hpo.file.load_experiment` builds a spec from YAML."""
        req = experiments_pb2.CreateExperimentRequest(spec=spec)
        result: experiments_pb2.Experiment = _call(
            self.experiments.CreateExperiment, req, timeout=self.timeout_s
        )
        return result

    def get_experiment(
        self, exp_id: int, include_intermediate: bool = False
    ) -> experiments_pb2.Experiment:
        req = experiments_pb2.GetExperimentRequest(
            id=exp_id, include_intermediate=include_intermediate
        )
        result: experiments_pb2.Experiment = _call(
            self.experiments.GetExperiment, req, timeout=self.timeout_s
        )
        return result

    def list_experiments(self, consumer: str = "") -> list[experiments_pb2.Experiment]:
        req = experiments_pb2.ListExperimentsRequest(consumer=consumer)
        return list(
            _call(self.experiments.ListExperiments, req, timeout=self.timeout_s).experiments
        )

    def stop_experiment(self, exp_id: int, user: str | None = None) -> experiments_pb2.Experiment:
        req = experiments_pb2.StopExperimentRequest(id=exp_id, user=user or getpass.getuser())
        result: experiments_pb2.Experiment = _call(
            self.experiments.StopExperiment, req, timeout=self.timeout_s
        )
        return result

    def watch_experiment(self, exp_id: int) -> Iterator[experiments_pb2.Experiment]:
        """The experiment now and at every change, until it ends."""
        req = experiments_pb2.WatchExperimentRequest(id=exp_id)
        try:
            yield from self.experiments.WatchExperiment(req)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise ClientError(e.code(), e.details() or "") from None
