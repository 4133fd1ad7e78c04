"""A small client library for schedulerd, used by `schedctl` and by any program
that wants to submit or watch jobs.

    from schedulerd.client import Client
    with Client("127.0.0.1:50051") as c:
        job = c.submit("/research/vision", ["python", "train.py"], gpus=2)
        print(c.get_job(job.id).reason)

Credentials (docs/security.md, docs/certificates.md), when not given, come from the
environment: SCHEDULERD_TOKEN (a bearer token) or SCHEDULERD_TOKEN_FILE (a file holding
one, readable by its owner only), and SCHEDULERD_CA (the cluster CA: TLS). Without a
token, a client on the daemon's own machine is known by its Unix user.
"""

from __future__ import annotations

import collections
import enum
import ipaddress
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from schedulerd.api.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    serving_pb2,
    serving_pb2_grpc,
)

# The vouch socket's default (schedulerd.auth.vouch.DEFAULT_SOCKET, which imports jwt:
# imported only when a credential must be vouched for).
_VOUCH_SOCKET = "/run/schedulerd/auth.sock"
DEFAULT_ADDRESS = "127.0.0.1:50051"
# The daemon's own limits (schedulerd/daemon/listeners.py): it answers with at most
# 32 MiB (a page of jobs is cut far below) and reads at most 16 MiB. Matching them, a
# large answer is never refused here and a request too large fails before it is sent.
MAX_RECEIVE_BYTES = 32 * 1024 * 1024
MAX_SEND_BYTES = 16 * 1024 * 1024


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


class CredentialError(ValueError):
    """A credential setting that cannot be used as it is (the message says why)."""


def read_token_file(path: Path) -> str:
    """The token in a file that only its owner may read (like ssh with a private key:
    a token readable by others is as good as theirs)."""
    try:
        with path.open() as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            text = f.read()
    except OSError as e:
        raise CredentialError(f"cannot read token file {path}: {e.strerror}") from None
    if mode & 0o077:
        raise CredentialError(
            f"token file {path} has permissions {mode:04o}: readable by others, refused "
            f"(chmod 600 {path})"
        )
    token = text.strip()
    if not token:
        raise CredentialError(f"token file {path} is empty")
    return token


def token_from_env(env: Mapping[str, str] = os.environ) -> str | None:
    """SCHEDULERD_TOKEN, else the token in SCHEDULERD_TOKEN_FILE, else None."""
    if env.get("SCHEDULERD_TOKEN"):
        return env["SCHEDULERD_TOKEN"].strip()
    if env.get("SCHEDULERD_TOKEN_FILE"):
        return read_token_file(Path(env["SCHEDULERD_TOKEN_FILE"]))
    return None


def is_local_address(address: str) -> bool:
    """Whether a gRPC target is on this machine (a unix socket or a loopback host)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    target = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    if target.startswith("["):  # [v6]:port
        host = target[1:].partition("]")[0]
    elif target.count(":") == 1:  # host:port
        host = target.partition(":")[0]
    else:  # a host alone, or a bare IPv6 address
        host = target
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _needs_vouching(address: str, ca: Path | None) -> bool:
    """A daemon that cannot know the caller by its loopback uid: a Unix socket, or
    another machine (over TLS only: the credential is a secret for a minute)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    return ca is not None and not is_local_address(address)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """`authorization: Bearer <token>` on every call (the services a Client calls have
    only unary requests). Metadata rather than call credentials: those gRPC sends on
    TLS channels only, and a token to the daemon's own machine may go in the clear."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token  # called per call: a vouched credential lives a minute

    def _details(self, d: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(d.metadata or ()), ("authorization", f"Bearer {self._token()}")]
        return _CallDetails(
            d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, d.compression
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def job_spec(
    consumer: str,
    command: Sequence[str],
    gpus: int = 1,
    *,
    gpus_max: int | None = None,
    user: str = "",
    name: str = "",
    env: Mapping[str, str] | None = None,
    working_dir: str = "",
    priority: int = 0,
    time_limit_s: float = 0,
    pool: str = "",
) -> jobs_pb2.JobSpec:
    """A job as `Client.submit` takes it, for `Client.submit_many`. `user` empty: the
    caller, as its credential proves; another user's name is for cluster admins.
    `time_limit_s`: the most it runs (0: no limit); see docs/scheduling.md. `pool`: the
    pool or GPU type it runs on ("": any; docs/pools.md)."""
    return jobs_pb2.JobSpec(
        consumer=consumer,
        user=user,
        name=name,
        command=list(command),
        env=dict(env or {}),
        working_dir=working_dir,
        gpus=jobs_pb2.GpuRequest(min=gpus, max=gpus_max or gpus),
        priority=priority,
        time_limit_seconds=round(time_limit_s),
        pool=pool,
    )


class JobState(enum.IntEnum):
    """A job's state as jobs_pb2.JobState's numbers, read as its name: str() and
    f-strings give "RUNNING", and it equals jobs_pb2.RUNNING."""

    JOB_STATE_UNSPECIFIED = 0
    PENDING = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5
    PREEMPTED = 6
    TIMEOUT = 7

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return format(self.name, spec)

    @classmethod
    def of(cls, number: int) -> JobState:
        """A state number the daemon sent; one newer than this library is UNSPECIFIED."""
        try:
            return cls(number)
        except ValueError:
            return cls.JOB_STATE_UNSPECIFIED

    @property
    def ended(self) -> bool:
        """Whether a job in this state is over for good (it never runs again)."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT)


class WatchedJob:
    """A Job as `Client.watch` gives it: the message's fields (`id`, `reason`,
    `exit_code`, `HasField`...), with `state` a JobState; `message` is the Job itself."""

    __slots__ = ("message", "state")

    def __init__(self, message: jobs_pb2.Job) -> None:
        self.message = message
        self.state = JobState.of(message.state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)

    def __repr__(self) -> str:
        return f"<job {self.message.id} {self.state}>"


class Client:
    """A connection to the daemon. TLS when `ca` (the cluster CA's certificate file) is
    given; `cert` and `key` add a client certificate. `token` None: from the
    environment (see the module's doc), else, to a remote daemon over TLS, a credential
    this node's agent vouches for (SCHEDULERD_AUTH_SOCKET, default
    /run/schedulerd/auth.sock); "" : none."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout_s: float = 30.0,
        *,
        token: str | None = None,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        max_receive_bytes: int = MAX_RECEIVE_BYTES,
        max_send_bytes: int = MAX_SEND_BYTES,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env`: where SCHEDULERD_* settings are read (default: this process's
        environment; the CLI's broker passes its caller's, docs/cli-broker.md)."""
        env = os.environ if env is None else env
        self.address = address
        self.timeout_s = timeout_s
        token = token_from_env(env) if token is None else token
        if ca is None and env.get("SCHEDULERD_CA"):
            ca = Path(env["SCHEDULERD_CA"])
        if token and ca is None and not is_local_address(address):
            raise CredentialError(
                f"a token goes to {address} only over TLS: give the cluster CA "
                "(--ca or SCHEDULERD_CA)"
            )
        options = [
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", max_send_bytes),
        ]
        if ca is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            from schedulerd.auth.tlsfiles import channel_credentials  # TLS only

            creds = channel_credentials(ca, cert, key)
            self.channel = grpc.secure_channel(address, creds, options=options)
        if token:
            secret = token
            self.channel = grpc.intercept_channel(self.channel, _BearerToken(lambda: secret))
        elif token is None and _needs_vouching(address, ca):
            # No token, and no loopback uid to be known by: this node's agent vouches.
            socket_path = env.get("SCHEDULERD_AUTH_SOCKET", _VOUCH_SOCKET)
            if os.path.exists(socket_path):
                from schedulerd.auth import vouch

                cached = vouch.CachedVouch(socket_path)

                def provider() -> str:
                    try:
                        return cached()
                    except vouch.BadVouch as e:
                        raise CredentialError(str(e)) from None

                self.channel = grpc.intercept_channel(self.channel, _BearerToken(provider))
        self.jobs = jobs_pb2_grpc.SchedulerStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.experiments = experiments_pb2_grpc.ExperimentsStub(self.channel)
        self.services = serving_pb2_grpc.ServicesStub(self.channel)

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
        user: str = "",
        name: str = "",
        env: Mapping[str, str] | None = None,
        working_dir: str = "",
        priority: int = 0,
        time_limit_s: float = 0,
        pool: str = "",
        array: str = "",
    ) -> jobs_pb2.Job:
        """`array`: a job array, in Slurm's --array syntax ("0-999", "0-999:10",
        "1,3,5-7"; docs/arrays.md): one job per index, in one transaction; the answer
        is the first."""
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
            time_limit_s=time_limit_s,
            pool=pool,
        )
        req = jobs_pb2.SubmitJobRequest(spec=spec, array=array)
        result: jobs_pb2.Job = _call(self.jobs.SubmitJob, req, timeout=self.timeout_s).job
        return result

    def submit_many(self, specs: Iterable[jobs_pb2.JobSpec]) -> list[jobs_pb2.Job]:
        """Submit several jobs (`job_spec(...)` builds each) in one call and one
        transaction: all are accepted, or none is and ClientError says which job
        ("job I of N", I from 0) was refused and why."""
        req = jobs_pb2.SubmitJobsRequest(jobs=[jobs_pb2.SubmitJobRequest(spec=s) for s in specs])
        return list(_call(self.jobs.SubmitJobs, req, timeout=self.timeout_s).jobs)

    def get_job(self, job_id: int, array_index: int | None = None) -> jobs_pb2.Job:
        """Job `job_id`; with `array_index`, that element of job array `job_id`."""
        req = jobs_pb2.GetJobRequest(id=job_id, array_index=array_index)
        result: jobs_pb2.Job = _call(self.jobs.GetJob, req, timeout=self.timeout_s)
        return result

    def list_jobs(
        self,
        consumer: str = "",
        states: Sequence[str] = (),
        user: str = "",
        limit: int = 0,
        array_id: int = 0,
    ) -> list[jobs_pb2.Job]:
        """Jobs newest first, across as many pages as the daemon cuts them into;
        `limit`: only the newest N; `array_id`: only that job array's elements."""
        jobs: list[jobs_pb2.Job] = []
        page = ""
        while True:
            req = jobs_pb2.ListJobsRequest(
                consumer=consumer,
                states=[jobs_pb2.JobState.Value(s.upper()) for s in states],
                user=user,
                limit=limit - len(jobs) if limit else 0,
                page_token=page,
                array_id=array_id,
            )
            resp = _call(self.jobs.ListJobs, req, timeout=self.timeout_s)
            jobs.extend(resp.jobs)
            page = resp.next_page_token
            if not page or (limit and len(jobs) >= limit):
                return jobs[:limit] if limit else jobs

    def cancel(
        self, job_id: int, array_index: int | None = None, whole_array: bool = False
    ) -> jobs_pb2.Job:
        """Who cancels is the caller, as its credential proves. `array_index`: that
        element of job array `job_id`; `whole_array`: with `job_id` an array's id,
        every element (on another job: that job alone)."""
        req = jobs_pb2.CancelJobRequest(id=job_id, array_index=array_index, whole_array=whole_array)
        result: jobs_pb2.Job = _call(self.jobs.CancelJob, req, timeout=self.timeout_s)
        return result

    def watch(
        self, consumer: str = "", ids: Sequence[int] = (), include_current: bool = True
    ) -> Iterator[WatchedJob]:
        """Job updates as they happen, each a `WatchedJob`: the Job message's fields, its
        `state` a `JobState` (str(): its name, "RUNNING"; equal to jobs_pb2.RUNNING). With
        `ids`, it ends once every one of those jobs has ended (as seen on the stream:
        with `include_current` False, a job that ended before is never seen); without,
        iterate, and `close()` the client to stop."""
        req = jobs_pb2.WatchJobsRequest(
            consumer=consumer, ids=list(ids), include_current=include_current
        )
        open_ids = set(ids)
        stream = self.jobs.WatchJobs(req)
        try:
            for update in stream:
                job = WatchedJob(update.job)
                yield job
                if open_ids and job.state.ended:
                    open_ids.discard(job.id)
                    if not open_ids:
                        return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise ClientError(e.code(), e.details() or "") from None
        finally:
            stream.cancel()  # a watch left early (break, return) ends its stream too

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
        self, text: str, source_name: str = "", dry_run: bool = False, at: float | None = None
    ) -> admin_pb2.ApplyPolicyResponse:
        """`at` (unix time, with `dry_run`): the entitlements as at that time, under the
        policy's time windows in force then."""
        req = admin_pb2.ApplyPolicyRequest(text=text, source_name=source_name, dry_run=dry_run)
        if at is not None:
            req.at.FromNanoseconds(int(at * 1e9))
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

    # -- tokens, identity and audit (docs/security.md) ----------------------

    def create_token(
        self, user: str, ttl_s: float, scopes: Sequence[str] = (), node: bool = False
    ) -> admin_pb2.CreateTokenResponse:
        """A new token for `user` (a node's name with `node`); the response's `secret`
        is the bearer token itself, which the daemon never shows again."""
        req = admin_pb2.CreateTokenRequest(
            user=user, node=node, scopes=list(scopes), ttl_seconds=ttl_s
        )
        result: admin_pb2.CreateTokenResponse = _call(
            self.admin.CreateToken, req, timeout=self.timeout_s
        )
        return result

    def list_tokens(self, user: str = "", include_revoked: bool = False) -> list[admin_pb2.Token]:
        req = admin_pb2.ListTokensRequest(user=user, include_revoked=include_revoked)
        return list(_call(self.admin.ListTokens, req, timeout=self.timeout_s).tokens)

    def revoke_token(self, token_id: str) -> admin_pb2.Token:
        req = admin_pb2.RevokeTokenRequest(id=token_id)
        result: admin_pb2.Token = _call(self.admin.RevokeToken, req, timeout=self.timeout_s)
        return result

    def whoami(self) -> admin_pb2.WhoAmIResponse:
        """Who the daemon takes this client for, and how it knows."""
        req = admin_pb2.WhoAmIRequest()
        result: admin_pb2.WhoAmIResponse = _call(self.admin.WhoAmI, req, timeout=self.timeout_s)
        return result

    def audit(
        self, limit: int = 100, before_id: int = 0, identity: str = ""
    ) -> list[admin_pb2.AuditRecord]:
        """Audit records, newest first; `before_id` pages back from an earlier answer."""
        req = admin_pb2.ListAuditRequest(limit=limit, before_id=before_id, identity=identity)
        return list(_call(self.admin.ListAudit, req, timeout=self.timeout_s).records)

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

    def stop_experiment(self, exp_id: int) -> experiments_pb2.Experiment:
        """Who stops it is the caller, as its credential proves."""
        req = experiments_pb2.StopExperimentRequest(id=exp_id)
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

    # -- inference services (docs/serve.md) ---------------------------------

    def create_service(self, spec: serving_pb2.ServiceSpec) -> serving_pb2.Service:
        """Deploy a service; `schedulerd.serve.file.load_service_file` builds a spec from
        YAML (`schedulerd.serve.codec.spec_to_pb` turns it into this message)."""
        req = serving_pb2.CreateServiceRequest(spec=spec)
        result: serving_pb2.Service = _call(
            self.services.CreateService, req, timeout=self.timeout_s
        )
        return result

    def get_service(self, name: str) -> serving_pb2.Service:
        req = serving_pb2.GetServiceRequest(name=name)
        result: serving_pb2.Service = _call(self.services.GetService, req, timeout=self.timeout_s)
        return result

    def list_services(
        self, consumer: str = "", include_deleted: bool = False
    ) -> list[serving_pb2.Service]:
        """Services of a consumer's subtree ("": all); deleted ones too with
        `include_deleted`."""
        req = serving_pb2.ListServicesRequest(consumer=consumer, include_deleted=include_deleted)
        return list(_call(self.services.ListServices, req, timeout=self.timeout_s).services)

    def update_service(
        self, name: str, spec: serving_pb2.ServiceSpec, fields: Sequence[str] | None = None
    ) -> serving_pb2.Service:
        """Change a service: `fields` names the spec's fields to take (as in
        ServiceSpec: "min_replicas", "command"...); None: every field that may change.
        A new command (env, working_dir...) rolls the replicas over one by one."""
        mask = field_mask_pb2.FieldMask(paths=list(fields or ()))
        req = serving_pb2.UpdateServiceRequest(name=name, spec=spec, update_mask=mask)
        result: serving_pb2.Service = _call(
            self.services.UpdateService, req, timeout=self.timeout_s
        )
        return result

    def delete_service(self, name: str) -> serving_pb2.Service:
        """Its replicas drain and stop; the service is DELETING until they have."""
        req = serving_pb2.DeleteServiceRequest(name=name)
        result: serving_pb2.Service = _call(
            self.services.DeleteService, req, timeout=self.timeout_s
        )
        return result

    def watch_service(self, name: str) -> Iterator[serving_pb2.Service]:
        """The service now and at every change, until it is deleted; `close()` the
        client to stop early."""
        req = serving_pb2.WatchServiceRequest(name=name)
        try:
            yield from self.services.WatchService(req)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise ClientError(e.code(), e.details() or "") from None
