"""AgentService: one bidirectional stream per agent (registration, heartbeats and
job reports up; start, stop, acks, heartbeat answers and log reads down).

Liveness comes from heartbeats (docs/fencing.md): every message from the agent counts,
and the daemon answers each heartbeat so that the agent can tell, by its lease,
whether the daemon still hears it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

from schedulerd import bounds
from schedulerd.api.v1 import agent_pb2, agent_pb2_grpc
from schedulerd.auth.authorize import Action, Target
from schedulerd.auth.identity import Identity
from schedulerd.daemon import nodes
from schedulerd.daemon.commands import Outbox
from schedulerd.daemon.convert import command_to_pb, node_from_register, report_from_pb
from schedulerd.daemon.gate import Gate
from schedulerd.daemon.links import HEARTBEAT, AgentLinks, HeartbeatAnswer, LinkQueue
from schedulerd.daemon.loop import SchedulingLoop
from schedulerd.daemon.reports import ReportBatcher, SupersededReport
from schedulerd.daemon.services.errors import abort
from schedulerd.daemon.state import ClusterState, Liveness
from schedulerd.store import StoreUnavailable

log = logging.getLogger("schedulerd.agents")

# Trailing metadata on a refused Register: the daemon answered (agent/link.py).
DAEMON_ANSWERED = "schedulerd-daemon-answered"


class AgentLinkService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        state: ClusterState,
        links: AgentLinks,
        loop: SchedulingLoop,
        heartbeat_s: float = 2.0,
        lease_s: float = 60.0,
        *,
        gate: Gate,
    ) -> None:
        self.gate = gate
        self.state = state
        self.links = links
        self.loop = loop
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        # Reports waiting at the same time are recorded in one change (daemon/reports.py).
        self.reports = ReportBatcher(state, self._deliver)

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[agent_pb2.DaemonMessage]:
        # Who it is before reading anything it sends: a node's credential, or a cluster
        # admin's on the daemon's own machine (the local agent).
        who = await self.gate.who(context, Action.CONNECT_NODE)
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("register"):
            await self._malformed(context, who, "", "FAILED_PRECONDITION", "send Register first")
        refusal = bounds.check_agent_message(first)
        if refusal is not None:
            node = first.register.node[:64]
            await self._malformed(context, who, node, "INVALID_ARGUMENT", refusal.message)
        reg = first.register
        name = reg.node
        # The name is the credential's, not the message's: node n1 cannot speak for n2.
        await self.gate.allow(context, who, Action.CONNECT_NODE, Target(node=name))
        known = self.state.nodes.get(name)
        if known is not None and self.state.liveness(known) is Liveness.UP:
            # Another agent answers for this node right now (two agents with one --node,
            # a cloned machine): refuse, rather than let the two kick each other out and
            # each kill the other's jobs as stale. A restarted agent gets in once its old
            # session has missed its heartbeats (it retries with backoff).
            silent = self.state.clock() - known.last_seen
            await self._refuse(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"node {name} already has a live agent session (heard {silent:.1f} s ago): "
                "is a second agent running with the same --node? A restarted agent is "
                "let in once the old session has missed its heartbeats",
            )
        record = node_from_register(reg)
        kind = "FAKE GPUs" if reg.fake_gpus else "GPUs"
        try:
            # Committed (with the node's new epoch) before the agent hears Registered.
            commands = nodes.register(self.state, record, [report_from_pb(r) for r in reg.jobs])
        except StoreUnavailable as e:
            log.error("agent %s: registration not recorded: %s", name, e)
            await self._refuse(
                context, grpc.StatusCode.UNAVAILABLE, f"registration not recorded: {e}"
            )
        epoch = self.state.nodes[name].epoch
        queue = self.links.attach(name)
        # This session's key for vouching for the node's users (auth/vouch.py).
        vouch_key = secrets.token_bytes(32)
        self.gate.vouch_keys[name] = vouch_key
        log.info("agent %s connected with %d %s (session %d)", name, len(reg.gpus), kind, epoch)
        self.links.send_all(commands)
        self.loop.wake()

        reader = asyncio.create_task(self._read(name, request_iterator, queue, epoch))
        try:
            yield agent_pb2.DaemonMessage(
                registered=agent_pb2.Registered(
                    heartbeat_interval=self.heartbeat_s,
                    epoch=epoch,
                    lease_seconds=self.lease_s,
                    vouch_key=vouch_key,
                )
            )
            while (command := await queue.get()) is not None:
                if isinstance(command, HeartbeatAnswer):
                    yield agent_pb2.DaemonMessage(heartbeat=agent_pb2.Heartbeat())
                else:
                    yield command_to_pb(command, epoch)
        finally:
            if self.gate.vouch_keys.get(name) is vouch_key:
                del self.gate.vouch_keys[name]  # its credentials die with the session
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if self.links.detach(name, queue) or not self.links.connected(name):
                nodes.disconnect(self.state, name)
                log.warning("agent %s disconnected", name)
                self.loop.wake()

    async def _malformed(
        self, context: grpc.aio.ServicerContext, who: Identity, node: str, code: str, why: str
    ) -> NoReturn:
        """A stream refused for what it sent (audited: the call wrapper checks no
        request streams)."""
        self.gate.audit.refused(who, Action.CONNECT_NODE, Target(node=node), code, why)
        await abort(context, grpc.StatusCode[code], why)

    async def _refuse(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
    ) -> None:
        """End a Register with an error that the agent can tell came from the daemon
        itself (not from a broken network): the daemon is there, so the agent's lease
        goes on (a full disk must not make every agent stop its jobs)."""
        context.set_trailing_metadata(((DAEMON_ANSWERED, "1"),))
        await abort(context, code, message)

    async def _report(self, name: str, report: nodes.PartReport, epoch: int | None) -> bool:
        """Record an agent's report (its commands are sent once it is committed, by the
        batcher, whoever waits for it); False: not recorded."""
        try:
            await self.reports.record(name, report, epoch)
        except SupersededReport:
            log.info(
                "agent %s: a report from session %s dropped: the session was replaced "
                "(the agent registered again, or the node was forgotten)",
                name,
                epoch,
            )
            return False
        except StoreUnavailable as e:
            # Nothing changed and no ack goes out: the agent keeps the report and sends
            # it again in its next Register.
            log.error("agent %s: report not recorded: %s; reconnecting", name, e)
            return False
        return True

    def _deliver(self, out: Outbox) -> None:
        """A committed change's commands to the agents, and the loop told."""
        self.links.send_all(out)
        self.loop.wake()

    async def _read(
        self,
        name: str,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        queue: LinkQueue,
        epoch: int | None = None,
    ) -> None:
        try:
            async for msg in request_iterator:
                node = self.state.nodes.get(name)
                if node is None or node.down:
                    # Declared down (or forgotten) while this stream stayed open: the
                    # agent must register again, so that its parts are reconciled.
                    log.warning("agent %s speaks on a stream of a node gone down: closing", name)
                    break
                node.last_seen = self.state.clock()  # liveness: any message counts
                refusal = bounds.check_agent_message(msg)
                if refusal is not None:
                    log.warning("agent %s sent a malformed message: %s", name, refusal.message)
                    break
                which = msg.WhichOneof("msg")
                if which == "heartbeat":
                    if msg.heartbeat.shutting_down and name not in self.state.stopping_nodes:
                        log.info("agent %s is shutting down: nothing new lands there", name)
                        self.state.stopping_nodes.add(name)
                        self.loop.wake()
                    queue.put_nowait(HEARTBEAT)
                elif which == "report":
                    # Shielded: a report queued for the disk commits and is applied even
                    # if this stream is cancelled meanwhile (its agent hung up), so its
                    # commands (the stops owed to the job's parts on other nodes) must go
                    # out all the same: nothing else sends them while those stay connected.
                    report = report_from_pb(msg.report)
                    if not await asyncio.shield(self._report(name, report, epoch)):
                        break
                elif which == "log_data":
                    d = msg.log_data
                    self.links.log_answer(name, d.request_id, d.data, d.found, d.next_offset)
        except Exception as e:  # the stream broke: end the writer side too
            log.info("agent %s stream ended: %s", name, e)
        finally:
            queue.put_nowait(None)
