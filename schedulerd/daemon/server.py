"""The daemon put together: store, state, loop and the gRPC services on one port,
with the standard health service and server reflection."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from schedulerd import failpoints
from schedulerd.api.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    serving_pb2,
    serving_pb2_grpc,
)
from schedulerd.auth.identity import Scope
from schedulerd.core.model import Policy
from schedulerd.daemon.audit import AuditTrail
from schedulerd.daemon.calls import CallWrapper
from schedulerd.daemon.experiments import ExperimentController
from schedulerd.daemon.gate import Gate
from schedulerd.daemon.links import AgentLinks
from schedulerd.daemon.listeners import (
    add_listeners,
    cluster_admins,
    open_unix_sockets,
    server_options,
)
from schedulerd.daemon.loop import SchedulingLoop
from schedulerd.daemon.policy_swap import API_SOURCE, put_in_force, refusal
from schedulerd.daemon.services.admin import AdminService
from schedulerd.daemon.services.agent_link import AgentLinkService
from schedulerd.daemon.services.experiments import ExperimentsService
from schedulerd.daemon.services.routing import RoutingService
from schedulerd.daemon.services.scheduler import SchedulerService
from schedulerd.daemon.services.serving import ServicesService
from schedulerd.daemon.serving import ServiceController
from schedulerd.daemon.state import ClusterState
from schedulerd.daemon.status import summary
from schedulerd.daemon.tokenbook import TokenBook
from schedulerd.daemon.web.app import build_app
from schedulerd.daemon.web.server import HttpServer
from schedulerd.lockfile import hold
from schedulerd.policy import default_policy_text, load_policy, read_policy_file
from schedulerd.sdnotify import Notifier, loop_wait_s
from schedulerd.store import Store
from schedulerd.store.security import SecurityStore

log = logging.getLogger("schedulerd")
TRIAL_TOKEN_TTL_S = 7 * 86400.0

SERVICE_NAMES = (
    jobs_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    experiments_pb2.DESCRIPTOR.services_by_name["Experiments"].full_name,
    serving_pb2.DESCRIPTOR.services_by_name["Services"].full_name,
    serving_pb2.DESCRIPTOR.services_by_name["Routing"].full_name,
)


STATUS_EVERY_S = 2.0


@dataclass
class DaemonConfig:
    listen: str = "127.0.0.1:50051"
    db_path: Path = Path("var/schedulerd.db")
    policy_path: Path | None = None  # None: the stored policy, else the embedded default
    tick_s: float = 1.0
    node_timeout_s: float = 120.0
    heartbeat_s: float = 2.0
    # Where trials' processes reach the daemon (SCHEDULERD_ADDRESS); empty: the
    # listen address, with this host's name for a wildcard host.
    advertise: str = ""
    # TLS (docs/security.md): the daemon's certificate and key; with them every
    # listener is TLS. The agents' listener asks each agent for a client certificate
    # of `tls_client_ca` (mTLS): the node it names is the agent's identity.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    agent_listen: str = ""  # empty: agents use `listen` too (node tokens, or local)
    also_listen: tuple[str, ...] = ()  # more listeners like `listen` (a Unix socket...)
    insecure: bool = False  # allow a non-loopback listener without TLS
    tls_loopback: bool = False  # TLS on loopback listeners too (default: plaintext there)
    admins: tuple[str, ...] = ()  # cluster admins besides the daemon's own user
    # HOST:PORT of the HTTP port (/metrics, /healthz, /readyz; docs/metrics.md); "": none.
    http_listen: str = ""


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        # systemd (Type=notify): READY once serving, STATUS, and WATCHDOG from the loop.
        self.notifier = notifier or Notifier({})
        self._status_at = 0.0
        # Before the store opens: a second daemon on the same file must not decide too.
        self._lock = hold(config.db_path.with_name(config.db_path.name + ".lock"), "the store")
        self.store = Store(config.db_path)
        self.state = ClusterState(self.store, clock, config.heartbeat_s)
        self.links = AgentLinks()
        points = failpoints.parse()
        fail = points.get("store-commit-fail")
        self.state.writer.fail_when = Path(fail) if fail else None
        hang = points.get("loop-hang")
        self.loop = SchedulingLoop(
            self.state,
            self.links,
            config.tick_s,
            config.node_timeout_s,
            on_turn=self._turned,
            max_wait_s=loop_wait_s(config.tick_s, self.notifier),
            hang_when=Path(hang) if hang else None,
        )
        self.security = SecurityStore(self.store)
        self.audit = AuditTrail(self.security, clock, self.state.writer)
        key_path = config.db_path.with_name(config.db_path.name + ".key")
        self.tokens = TokenBook(key_path, self.security)
        self.gate = Gate(
            self.tokens,
            self.audit,
            cluster_admins(config.admins),
            self._policy,
            lambda: self.ports,
            clock,
        )
        self.server = grpc.aio.server(
            interceptors=[CallWrapper(self.audit, self.gate.identify, self.state.metrics)],
            options=server_options(),
        )
        self.port = 0
        self.agent_port = 0
        self.ports: frozenset[int] = frozenset()
        self._audit_task: asyncio.Task[None] | None = None
        self.agent_link: AgentLinkService | None = None  # set by start()
        self._loop_task: asyncio.Task[None] | None = None
        self._experiments_task: asyncio.Task[None] | None = None
        self.experiments: ExperimentController | None = None
        self._services_task: asyncio.Task[None] | None = None
        self.services: ServiceController | None = None
        self.http: HttpServer | None = None
        self.http_port = 0

    def _turned(self) -> None:
        """After each turn of the scheduling loop: it is alive (the watchdog), and
        what the cluster looks like (STATUS, at most every 2 s: it counts every job)."""
        self.notifier.watchdog()
        now = time.monotonic()
        if now - self._status_at >= STATUS_EVERY_S:
            self._status_at = now
            self.notifier.status(summary(self.state))

    async def reload_policy(self, path: Path | None = None) -> str:
        """Re-read the policy file (SIGHUP, `systemctl reload`): the one given, else
        the one the daemon started with. Returns what happened, for the log; raises
        PolicyError (FILE:LINE: KEY: why), PolicyRefused or StoreUnavailable, and then
        the policy in force stays as it was."""
        path = path or self.config.policy_path
        if path is None:
            return "no policy file configured (policy): the policy in force stays"
        # Off the event loop, as ApplyPolicy: a big file must not stall the agents' streams.
        text = await asyncio.to_thread(partial(read_policy_file, path, trusted=True))
        policy = await asyncio.to_thread(load_policy, text, str(path))
        unchanged = self._file_unchanged(path, text)
        if unchanged:
            return unchanged
        record = put_in_force(self.state, policy, text, str(path))
        self.config.policy_path = path
        self.loop.wake()
        return f"policy {path} (version {record.version}) in force"

    def _file_unchanged(self, path: Path, text: str) -> str:
        """Why the policy file need not be put in force again, or "": it says what was
        last applied from it, and what is in force is that, or was applied since through
        the API (schedctl policy apply), which then stays until the file is edited. A
        policy from another file (a start with another --policy) never keeps it out."""
        last = self.store.latest_policy_from(str(path))
        current = self.state.policy_record
        if last is None or last.text != text or current is None:
            return ""
        if current.version == last.version:
            return f"policy {path} unchanged (version {current.version})"
        if not current.source.startswith(API_SOURCE):
            return ""
        return (
            f"policy {path} unchanged since it was applied (version {last.version}); "
            f"version {current.version}, applied since from {current.source}, stays"
        )

    def _policy(self) -> Policy:
        assert self.state.policy is not None
        return self.state.policy

    def _load_policy(self) -> None:
        """Startup policy: the policy file if it changed since it was last applied, else
        the last one applied (kept in the store), else the embedded default."""
        self.state.load()
        stored = self.state.policy_record
        path = self.config.policy_path
        from_file = read_policy_file(path, trusted=True) if path is not None else None
        kept = "" if path is None or from_file is None else self._file_unchanged(path, from_file)
        if kept:
            log.info("%s", kept)
        if path is not None and from_file is not None and not kept:
            text, source = from_file, str(path)
        elif stored is not None:
            text, source = stored.text, stored.source
        else:
            text, source = default_policy_text(), "embedded default"
        policy = load_policy(text, source)  # PolicyError: refuse to start, say why
        why = refusal(self.state, policy, source)  # the rule ApplyPolicy and reloads keep
        if why is not None:
            raise SystemExit(why)
        if stored is None or (stored.text, stored.source) != (text, source):
            stored = self.store.save_policy(text, source, self.state.clock())
        self.state.set_policy(policy, stored)
        log.info("policy %s (version %d) in force", source, stored.version)

    async def start(self) -> None:
        self._load_policy()
        jobs_pb2_grpc.add_SchedulerServicer_to_server(
            SchedulerService(self.state, self.links, self.loop, self.gate), self.server
        )
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminService(self.state, self.loop, self.links, self.gate), self.server
        )
        self.agent_link = AgentLinkService(
            self.state,
            self.links,
            self.loop,
            self.config.heartbeat_s,
            self.lease_s(),
            gate=self.gate,
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self.agent_link, self.server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port, self.agent_port = add_listeners(self.server, self.config)
        self.ports = frozenset(p for p in (self.port, self.agent_port) if p)
        # Optuna's database beside ours (FIELD-NOTES: its own file).
        optuna_path = self.config.db_path.with_name(self.config.db_path.name + ".optuna.sqlite")
        self.experiments = ExperimentController(
            self.state,
            self.links,
            self.loop,
            optuna_path,
            self._advertise(),
            self.config.tick_s,
            self._trial_token,
        )
        await self.experiments.start()
        experiments_pb2_grpc.add_ExperimentsServicer_to_server(
            ExperimentsService(self.state, self.experiments, self.gate), self.server
        )
        self.services = ServiceController(
            self.state, self.links, self.loop, min(0.5, self.config.tick_s)
        )
        self.services.start()
        serving_pb2_grpc.add_ServicesServicer_to_server(
            ServicesService(self.services, self.gate), self.server
        )
        serving_pb2_grpc.add_RoutingServicer_to_server(
            RoutingService(self.services, self.gate), self.server
        )
        await self.server.start()
        open_unix_sockets(self.config)
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.config.http_listen:
            self.http = HttpServer(
                build_app(self), self.config.http_listen, insecure=self.config.insecure
            )
            self.http_port = await self.http.start()
        self.notifier.ready(summary(self.state))
        self._loop_task = asyncio.create_task(self.loop.run())
        self._audit_task = asyncio.create_task(self.audit.run())
        self._experiments_task = asyncio.create_task(self.experiments.run())
        self._services_task = asyncio.create_task(self.services.run())
        active = len(self.state.jobs)
        log.info(
            "schedulerd listening on %s (port %d), store %s, %d active jobs",
            self.config.listen,
            self.port,
            self.config.db_path,
            active,
        )

    def _advertise(self) -> str:
        if self.config.advertise:
            return self.config.advertise
        host = self.config.listen.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]", "::"):
            host = socket.getfqdn()
        return f"{host}:{self.port}"

    def _trial_token(self, user: str) -> str:
        """A token for the trials of `user`'s experiments: scope "experiments" only,
        for a week (docs/hpo.md); one per user per daemon run."""
        _, secret = self.tokens.mint(
            user,
            False,
            frozenset({Scope.EXPERIMENTS}),
            TRIAL_TOKEN_TTL_S,
            "schedulerd",
            self.state.clock(),
        )
        return secret

    def lease_s(self) -> float:
        """How long an agent that hears nothing from the daemon keeps its jobs: half the
        node timeout, so that its jobs are gone (or going) before the daemon requeues
        them at the timeout and starts them elsewhere (docs/fencing.md)."""
        return self.config.node_timeout_s / 2

    async def stop_deciding(self) -> None:
        """First step of a shutdown: no new decisions, no new trials. The servicers
        still run, so that agents' reports of jobs stopping are recorded."""
        running = (self._loop_task, self._experiments_task, self._services_task)
        tasks = [t for t in running if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = self._experiments_task = self._services_task = None

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.stop_deciding()
        await self.server.stop(grace_s)
        if self.agent_link is not None:
            self.agent_link.reports.stop()  # no stream is left to tell
        if self.http is not None:
            await self.http.stop()
        if self._audit_task is not None:
            self._audit_task.cancel()
        self.audit.flush()
        self.state.writer.close()  # what is queued is written (no caller waits for it now)
        self.state.snapshot()  # usage up to now ...
        self.state.save_usage()  # ... kept for the next start
        self.store.close()
