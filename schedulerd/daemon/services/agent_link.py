"""AgentService: one bidirectional stream per agent (registration, heartbeats and
job reports up; start, stop, acks and log reads down)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from schedulerd.api.v1 import agent_pb2, agent_pb2_grpc
from schedulerd.daemon import nodes
from schedulerd.daemon.commands import Command
from schedulerd.daemon.convert import command_to_pb, node_from_register, report_from_pb
from schedulerd.daemon.links import AgentLinks, ReadLogRequest
from schedulerd.daemon.loop import SchedulingLoop
from schedulerd.daemon.services.errors import abort
from schedulerd.daemon.state import ClusterState

log = logging.getLogger("schedulerd.agents")


class AgentLinkService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        state: ClusterState,
        links: AgentLinks,
        loop: SchedulingLoop,
        heartbeat_s: float = 2.0,
    ) -> None:
        self.state = state
        self.links = links
        self.loop = loop
        self.heartbeat_s = heartbeat_s

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[agent_pb2.DaemonMessage]:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("register"):
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "send Register first")
        reg = first.register
        name = reg.node
        queue = self.links.attach(name)
        record = node_from_register(reg)
        kind = "FAKE GPUs" if reg.fake_gpus else "GPUs"
        log.info("agent %s connected with %d %s", name, len(reg.gpus), kind)
        self.links.send_all(
            nodes.register(self.state, record, [report_from_pb(r) for r in reg.jobs])
        )
        self.loop.wake()

        reader = asyncio.create_task(self._read(name, request_iterator, queue))
        try:
            yield agent_pb2.DaemonMessage(
                registered=agent_pb2.Registered(heartbeat_interval=self.heartbeat_s)
            )
            while (command := await queue.get()) is not None:
                yield command_to_pb(command)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if self.links.detach(name, queue):
                nodes.disconnect(self.state, name)
                log.warning("agent %s disconnected", name)
                self.loop.wake()

    async def _read(
        self,
        name: str,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        queue: asyncio.Queue[Command | ReadLogRequest | None],
    ) -> None:
        try:
            async for msg in request_iterator:
                node = self.state.nodes.get(name)
                if node is not None:
                    node.last_seen = self.state.clock()
                which = msg.WhichOneof("msg")
                if which == "report":
                    out = nodes.report(self.state, name, report_from_pb(msg.report))
                    self.links.send_all(out)
                    self.loop.wake()
                elif which == "log_data":
                    d = msg.log_data
                    self.links.log_answer(d.request_id, d.data, d.found, d.next_offset)
        except Exception as e:  # the stream broke: end the writer side too
            log.info("agent %s stream ended: %s", name, e)
        finally:
            queue.put_nowait(None)
