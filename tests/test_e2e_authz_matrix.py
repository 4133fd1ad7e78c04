"""The authorization matrix (docs/security.md): every role × every RPC, allowed or
refused as specified, against a real daemon over real gRPC.

Roles: anonymous (a Unix socket, no token), the owner of the objects (alice, a user of
/a), another user (bob, a user of /b), a consumer admin of /a (carol), a cluster admin
(this test process: root over loopback, known by its uid), a node (n1's node token),
another node (n2's). Each row gets fresh objects (a job of alice's, an experiment of
hers, a node), so that rows do not depend on each other's order.

Outcome letters: U = UNAUTHENTICATED, D = PERMISSION_DENIED, A = OK, R = OK but
redacted (no command or env), a = let through the door but refused for another
reason (NOT_FOUND...), which is fine: only the door is tested here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import hpo_helpers
import pytest
from harness import Cluster

from schedulerd.api.v1 import (
    admin_pb2,
    agent_pb2,
    agent_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    serving_pb2,
    serving_pb2_grpc,
)
from schedulerd.client import Client

POLICY = """
version: 1
run_as_root: true
users: "*"
consumers:
  a:
    owned: 0
    users: [alice]
    admins: [carol]
  b:
    owned: 0
    users: [bob]
"""

ROLES = ("anon", "owner", "other", "cadmin", "admin", "node", "other_node")
DOOR_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@dataclass
class World:
    cluster: Cluster
    socket: str
    channels: dict[str, grpc.Channel] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    owner: Client | None = None
    counter: int = 0

    def metadata(self, role: str) -> tuple[tuple[str, str], ...]:
        token = self.tokens.get(role)
        return (("authorization", f"Bearer {token}"),) if token else ()

    def channel(self, role: str) -> grpc.Channel:
        return self.channels[role]

    def fresh_job(self) -> int:
        assert self.owner is not None
        return self.owner.submit("/a", [sys.executable, "-c", "pass"], gpus=1).id

    def fresh_experiment(self) -> int:
        assert self.owner is not None
        return self.owner.create_experiment(_experiment_pb(self)).id

    def fresh_service(self) -> str:
        assert self.owner is not None
        return self.owner.create_service(_service_pb(self)).spec.name

    def fresh_node(self) -> str:
        self.counter += 1
        name = f"fresh{self.counter}"
        # The admin's local credential may connect as any node (the local agent's way).
        _connect(self.channels["admin"], (), name)
        return name

    def spare_token(self) -> str:
        admin = Client(self.cluster.address, timeout_s=10)
        try:
            return admin.create_token("alice", 3600).token.id
        finally:
            admin.close()


def _connect(channel: grpc.Channel, metadata: Any, node: str) -> None:
    """Register as `node` and hang up at once."""
    register = agent_pb2.AgentMessage(
        register=agent_pb2.Register(
            node=node,
            pool="default",
            gpus=[agent_pb2.GpuInfo(index=0, uuid=f"GPU-{node}", model="fake")],
            fake_gpus=True,
        )
    )
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    deadline = time.monotonic() + 10
    while True:
        try:
            for msg in stub.Connect(iter([register]), metadata=metadata, timeout=10):
                assert msg.HasField("registered")
                break
            return
        except grpc.RpcError as e:
            # The previous row's session as this node may not be over yet on a busy
            # machine: the daemon refuses a second live session (ALREADY_EXISTS).
            if e.code() != grpc.StatusCode.ALREADY_EXISTS or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# Each row: (name, call(world, role) -> response or stream item, expected by role).
Call = Callable[[World, str], Any]


def _jobs(w: World, role: str) -> jobs_pb2_grpc.SchedulerStub:
    return jobs_pb2_grpc.SchedulerStub(w.channel(role))


def _admin(w: World, role: str) -> Any:
    from schedulerd.api.v1 import admin_pb2_grpc

    return admin_pb2_grpc.AdminStub(w.channel(role))


def _exps(w: World, role: str) -> Any:
    from schedulerd.api.v1 import experiments_pb2_grpc

    return experiments_pb2_grpc.ExperimentsStub(w.channel(role))


def _spec(consumer: str) -> jobs_pb2.JobSpec:
    return jobs_pb2.JobSpec(
        consumer=consumer, command=[sys.executable, "-c", "pass"], gpus=jobs_pb2.GpuRequest(min=1)
    )


def _first(stream: Any) -> Any:
    for item in stream:
        return item
    return None


def _experiment_pb(w: World) -> Any:
    spec = hpo_helpers.spec(w.cluster.root, "/a", trials=1, parallel=1)
    spec.user = ""  # the caller's
    return spec


ROWS: list[tuple[str, Call, str]] = [
    # Scheduler           anon owner other cadmin admin node other_node
    (
        "SubmitJob",
        lambda w, r: _jobs(w, r).SubmitJob(
            jobs_pb2.SubmitJobRequest(spec=_spec("/a")), metadata=w.metadata(r), timeout=10
        ),
        # The admin (root) is not in /a's users: the policy binds admins too.
        "UADDDDD",
    ),
    (
        "SubmitJobs",
        lambda w, r: _jobs(w, r).SubmitJobs(
            jobs_pb2.SubmitJobsRequest(jobs=[jobs_pb2.SubmitJobRequest(spec=_spec("/a"))]),
            metadata=w.metadata(r),
            timeout=10,
        ),
        "UADDDDD",
    ),
    (
        "GetJob",
        lambda w, r: _jobs(w, r).GetJob(
            jobs_pb2.GetJobRequest(id=w.fresh_job()), metadata=w.metadata(r), timeout=10
        ),
        "UARAADD",
    ),
    (
        "ListJobs",
        lambda w, r: _jobs(w, r).ListJobs(
            jobs_pb2.ListJobsRequest(limit=5), metadata=w.metadata(r), timeout=10
        ),
        "UAAAADD",
    ),
    (
        "CancelJob",
        lambda w, r: _jobs(w, r).CancelJob(
            jobs_pb2.CancelJobRequest(id=w.fresh_job()), metadata=w.metadata(r), timeout=10
        ),
        "UADAADD",
    ),
    (
        "WatchJobs",
        lambda w, r: _first(
            _jobs(w, r).WatchJobs(
                jobs_pb2.WatchJobsRequest(ids=[w.fresh_job()], include_current=True),
                metadata=w.metadata(r),
                timeout=10,
            )
        ),
        "UAAAADD",
    ),
    (
        "StreamLogs",
        lambda w, r: list(
            _jobs(w, r).StreamLogs(
                jobs_pb2.StreamLogsRequest(id=w.fresh_job()), metadata=w.metadata(r), timeout=10
            )
        ),
        "UADAADD",
    ),
    # Admin
    (
        "GetPolicy",
        lambda w, r: _admin(w, r).GetPolicy(
            admin_pb2.GetPolicyRequest(), metadata=w.metadata(r), timeout=10
        ),
        "UAAAADD",
    ),
    (
        "ApplyPolicy(dry_run)",
        lambda w, r: _admin(w, r).ApplyPolicy(
            admin_pb2.ApplyPolicyRequest(text=POLICY, dry_run=True),
            metadata=w.metadata(r),
            timeout=20,
        ),
        "UDDDADD",
    ),
    (
        "ApplyPolicy",
        lambda w, r: _admin(w, r).ApplyPolicy(
            admin_pb2.ApplyPolicyRequest(text=POLICY), metadata=w.metadata(r), timeout=20
        ),
        "UDDDADD",
    ),
    (
        "ListConsumers",
        lambda w, r: _admin(w, r).ListConsumers(
            admin_pb2.ListConsumersRequest(), metadata=w.metadata(r), timeout=10
        ),
        "UAAAADD",
    ),
    (
        "ListNodes",
        lambda w, r: _admin(w, r).ListNodes(
            admin_pb2.ListNodesRequest(), metadata=w.metadata(r), timeout=10
        ),
        "UAAAADD",
    ),
    (
        "DrainNode",
        lambda w, r: _admin(w, r).DrainNode(
            admin_pb2.DrainNodeRequest(node=w.fresh_node()), metadata=w.metadata(r), timeout=10
        ),
        "UDDDADD",
    ),
    (
        "UndrainNode",
        lambda w, r: _admin(w, r).UndrainNode(
            admin_pb2.UndrainNodeRequest(node=w.fresh_node()), metadata=w.metadata(r), timeout=10
        ),
        "UDDDADD",
    ),
    (
        "ForgetNode",
        lambda w, r: _admin(w, r).ForgetNode(
            admin_pb2.ForgetNodeRequest(node=w.fresh_node()), metadata=w.metadata(r), timeout=10
        ),
        "UDDDADD",
    ),
    (
        # Tokens cannot mint tokens; the admin's local login can, for anyone.
        "CreateToken",
        lambda w, r: _admin(w, r).CreateToken(
            admin_pb2.CreateTokenRequest(user="alice", ttl_seconds=600),
            metadata=w.metadata(r),
            timeout=10,
        ),
        "UDDDADD",
    ),
    (
        "ListTokens",
        lambda w, r: _admin(w, r).ListTokens(
            admin_pb2.ListTokensRequest(), metadata=w.metadata(r), timeout=10
        ),
        "UAAAADD",
    ),
    (
        "RevokeToken",
        lambda w, r: _admin(w, r).RevokeToken(
            admin_pb2.RevokeTokenRequest(id=w.spare_token()), metadata=w.metadata(r), timeout=10
        ),
        # Someone else's token is NOT_FOUND, as a token that does not exist (no probing).
        "UAaaADD",
    ),
    (
        "WhoAmI",
        lambda w, r: _admin(w, r).WhoAmI(
            admin_pb2.WhoAmIRequest(), metadata=w.metadata(r), timeout=10
        ),
        "AAAAAAA",
    ),
    (
        "ListAudit",
        lambda w, r: _admin(w, r).ListAudit(
            admin_pb2.ListAuditRequest(limit=5), metadata=w.metadata(r), timeout=10
        ),
        "UDDDADD",
    ),
    # Agents: register as n1
    (
        "AgentService.Connect(n1)",
        lambda w, r: _connect(w.channel(r), w.metadata(r), "n1"),
        "UDDDAAD",
    ),
    # Experiments
    (
        "CreateExperiment",
        lambda w, r: _exps(w, r).CreateExperiment(
            _create_experiment_request(w), metadata=w.metadata(r), timeout=20
        ),
        "UADDDDD",
    ),
    (
        "GetExperiment",
        lambda w, r: _exps(w, r).GetExperiment(
            _get_experiment_request(w), metadata=w.metadata(r), timeout=10
        ),
        "UADAADD",
    ),
    (
        "ListExperiments",
        lambda w, r: _exps(w, r).ListExperiments(
            _list_experiments_request(), metadata=w.metadata(r), timeout=10
        ),
        "UAAAADD",
    ),
    (
        "StopExperiment",
        lambda w, r: _exps(w, r).StopExperiment(
            _stop_experiment_request(w), metadata=w.metadata(r), timeout=20
        ),
        "UADAADD",
    ),
    (
        "WatchExperiment",
        lambda w, r: _first(
            _exps(w, r).WatchExperiment(
                _watch_experiment_request(w), metadata=w.metadata(r), timeout=10
            )
        ),
        "UADAADD",
    ),
    (
        # Trial 99 does not exist: the owner gets through the door, then NOT_FOUND.
        "ReportTrial",
        lambda w, r: _exps(w, r).ReportTrial(
            _report_request(w), metadata=w.metadata(r), timeout=10
        ),
        "UaDaaDD",
    ),
    # Services (a fresh one of alice's for each call on one)
    (
        "CreateService",
        lambda w, r: _svcs(w, r).CreateService(
            serving_pb2.CreateServiceRequest(spec=_service_pb(w)),
            metadata=w.metadata(r),
            timeout=20,
        ),
        "UADDDDD",
    ),
    (
        "GetService",
        lambda w, r: _svcs(w, r).GetService(
            serving_pb2.GetServiceRequest(name=w.fresh_service()),
            metadata=w.metadata(r),
            timeout=10,
        ),
        "UARAADD",
    ),
    (
        "ListServices",
        lambda w, r: _svcs(w, r).ListServices(
            serving_pb2.ListServicesRequest(), metadata=w.metadata(r), timeout=10
        ),
        "UAAAADD",
    ),
    (
        "UpdateService",
        lambda w, r: _svcs(w, r).UpdateService(
            serving_pb2.UpdateServiceRequest(
                name=w.fresh_service(),
                spec=serving_pb2.ServiceSpec(max_replicas=2),
                update_mask={"paths": ["max_replicas"]},
            ),
            metadata=w.metadata(r),
            timeout=20,
        ),
        "UADAADD",
    ),
    (
        # What the replicas run, as alice: hers to change, or a cluster admin's; not
        # her consumer admin's (carol could otherwise run anything as alice).
        "UpdateService(command)",
        lambda w, r: _svcs(w, r).UpdateService(
            serving_pb2.UpdateServiceRequest(
                name=w.fresh_service(),
                spec=serving_pb2.ServiceSpec(command=["/bin/sh", "-c", "id"]),
                update_mask={"paths": ["command"]},
            ),
            metadata=w.metadata(r),
            timeout=20,
        ),
        "UADDADD",
    ),
    (
        "DeleteService",
        lambda w, r: _svcs(w, r).DeleteService(
            serving_pb2.DeleteServiceRequest(name=w.fresh_service()),
            metadata=w.metadata(r),
            timeout=20,
        ),
        "UADAADD",
    ),
    (
        "WatchService",
        lambda w, r: _first(
            _svcs(w, r).WatchService(
                serving_pb2.WatchServiceRequest(name=w.fresh_service()),
                metadata=w.metadata(r),
                timeout=10,
            )
        ),
        "UARAADD",
    ),
    # The router's calls: a cluster admin's (with scope "router" when scoped)
    (
        "WatchRoutes",
        lambda w, r: _first(
            _routing(w, r).WatchRoutes(
                serving_pb2.WatchRoutesRequest(router="t"), metadata=w.metadata(r), timeout=10
            )
        ),
        "UDDDADD",
    ),
    (
        "ReportLoad",
        lambda w, r: _routing(w, r).ReportLoad(
            serving_pb2.LoadReport(router="t"), metadata=w.metadata(r), timeout=10
        ),
        "UDDDADD",
    ),
    (
        "CheckAccess",
        lambda w, r: _routing(w, r).CheckAccess(
            serving_pb2.CheckAccessRequest(service="none", token="x"),
            metadata=w.metadata(r),
            timeout=10,
        ),
        "UDDDADD",
    ),
]


def _svcs(w: World, role: str) -> Any:
    return serving_pb2_grpc.ServicesStub(w.channel(role))


def _routing(w: World, role: str) -> Any:
    return serving_pb2_grpc.RoutingStub(w.channel(role))


def _service_pb(w: World) -> Any:
    w.counter += 1
    return serving_pb2.ServiceSpec(
        name=f"svc-{w.counter}",
        consumer="/a",
        command=[sys.executable, "-c", "import time; time.sleep(60)"],
        min_replicas=1,
    )


def _create_experiment_request(w: World) -> Any:
    from schedulerd.api.v1 import experiments_pb2

    return experiments_pb2.CreateExperimentRequest(spec=_experiment_pb(w))


def _get_experiment_request(w: World) -> Any:
    from schedulerd.api.v1 import experiments_pb2

    return experiments_pb2.GetExperimentRequest(id=w.fresh_experiment())


def _list_experiments_request() -> Any:
    from schedulerd.api.v1 import experiments_pb2

    return experiments_pb2.ListExperimentsRequest()


def _stop_experiment_request(w: World) -> Any:
    from schedulerd.api.v1 import experiments_pb2

    return experiments_pb2.StopExperimentRequest(id=w.fresh_experiment())


def _watch_experiment_request(w: World) -> Any:
    from schedulerd.api.v1 import experiments_pb2

    return experiments_pb2.WatchExperimentRequest(id=w.fresh_experiment())


def _report_request(w: World) -> Any:
    from schedulerd.api.v1 import experiments_pb2

    return experiments_pb2.ReportTrialRequest(
        experiment_id=w.fresh_experiment(), trial=99, job_id=1, step=0, value=1.0
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("authz")
    sock = f"unix:{root}/daemon.sock"
    cluster = Cluster(root, POLICY, daemon_args=("--also-listen", sock))
    cluster.start_daemon()
    w = World(cluster, sock)
    try:
        admin = cluster.client  # root over loopback: a cluster admin by its uid
        for role, user, node in (
            ("owner", "alice", False),
            ("other", "bob", False),
            ("cadmin", "carol", False),
            ("node", "n1", True),
            ("other_node", "n2", True),
        ):
            w.tokens[role] = admin.create_token(user, 3600, node=node).secret
        for role in ROLES:
            # The admin is known by its uid over loopback; everyone else comes through
            # the Unix socket, where only a token says who one is.
            target = cluster.address if role == "admin" else sock
            w.channels[role] = grpc.insecure_channel(target)
        w.owner = Client(sock, timeout_s=10, token=w.tokens["owner"])
        yield w
    finally:
        for ch in w.channels.values():
            ch.close()
        if w.owner is not None:
            w.owner.close()
        cluster.stop()


@pytest.mark.parametrize(("rpc", "call", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_authorization_matrix(world: World, rpc: str, call: Call, expected: str) -> None:
    assert len(expected) == len(ROLES), rpc
    got = []
    for role in ROLES:
        try:
            result = call(world, role)
        except grpc.RpcError as e:
            code = e.code()
            letter = {
                grpc.StatusCode.UNAUTHENTICATED: "U",
                grpc.StatusCode.PERMISSION_DENIED: "D",
            }.get(code, "a")
            assert code is not grpc.StatusCode.UNKNOWN, f"{rpc} as {role}: {e.details()}"
            assert code is not grpc.StatusCode.INTERNAL, f"{rpc} as {role}: {e.details()}"
        else:
            letter = "R" if getattr(result, "redacted", False) else "A"
            if letter == "R":
                assert not result.spec.command and not result.spec.env, rpc
        got.append(letter)
    assert "".join(got) == expected, (
        f"{rpc}: roles {' '.join(ROLES)}\n expected {expected}\n      got {''.join(got)}"
    )


def test_the_audit_names_who_was_refused(world: World) -> None:
    """A refusal is audited with the identity the credential proved. (A user of its own:
    bob's refusals in the matrix are past the 20 a window that are recorded one by one.)"""
    dave = world.cluster.client.create_token("dave", 3600).secret
    with pytest.raises(grpc.RpcError):
        _admin(world, "other").DrainNode(
            admin_pb2.DrainNodeRequest(node="n1"),
            metadata=(("authorization", f"Bearer {dave}"),),
            timeout=10,
        )
    records = world.cluster.client.audit(limit=50)
    refusal = next(r for r in records if r.action == "Admin.DrainNode" and r.identity == "dave")
    assert refusal.result == "PERMISSION_DENIED"
    assert refusal.credential == "token"
    assert "node n1" in refusal.object


def test_a_submission_runs_as_its_credential_not_its_user_field(world: World) -> None:
    """alice's token with spec.user = 'bob': refused (only cluster admins submit for
    others); with no user, the job is alice's."""
    spec = _spec("/a")
    spec.user = "bob"
    with pytest.raises(grpc.RpcError) as e:
        _jobs(world, "owner").SubmitJob(
            jobs_pb2.SubmitJobRequest(spec=spec), metadata=world.metadata("owner"), timeout=10
        )
    assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
    job = world.owner.submit("/a", [sys.executable, "-c", "pass"])  # type: ignore[union-attr]
    assert job.spec.user == "alice"


def test_others_ended_jobs_show_no_agent_words(world: World) -> None:
    """An ended job's reason may quote its command or paths: others see its state only,
    and a name that defaulted to argv[0] is left out."""
    assert world.owner is not None
    job = world.owner.submit("/a", ["/opt/secret-tool", "--password=hunter2"])
    world.owner.cancel(job.id)
    seen = _jobs(world, "other").GetJob(
        jobs_pb2.GetJobRequest(id=job.id), metadata=world.metadata("other"), timeout=10
    )
    assert seen.redacted and seen.reason == "cancelled" and seen.spec.name == ""
    own = world.owner.get_job(job.id)
    assert own.spec.name == "/opt/secret-tool" and "cancelled" in own.reason


def test_watchers_are_bounded_per_identity(world: World) -> None:
    """Each watcher may hold 8 MiB of backlog: one identity opens at most 16."""
    stub = _jobs(world, "other")
    streams = [
        stub.WatchJobs(jobs_pb2.WatchJobsRequest(), metadata=world.metadata("other"), timeout=30)
        for _ in range(17)
    ]
    try:
        # A watcher let in sends nothing yet (no job changes); a refused one ends at once.
        refused = None
        deadline = time.monotonic() + 10
        while refused is None and time.monotonic() < deadline:
            refused = next((s for s in streams if s.done()), None)
            time.sleep(0.05)
        assert refused is not None, "no watcher was refused"
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert sum(1 for s in streams if s.done()) == 1
    finally:
        for s in streams:
            s.cancel()
