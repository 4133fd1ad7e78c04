"""Open agent streams: one outgoing queue per connected node, and the log reads
waiting for an agent's answer."""

from __future__ import annotations

import asyncio
import secrets

from schedulerd.daemon.commands import Command, Outbox


class NodeNotConnected(RuntimeError):
    pass


class HeartbeatAnswer:
    """The daemon's answer to an agent's heartbeat, queued in order with commands."""


HEARTBEAT = HeartbeatAnswer()


class ReadLogRequest:
    def __init__(self, request_id: int, job_id: int, offset: int, max_bytes: int) -> None:
        self.request_id = request_id
        self.job_id = job_id
        self.offset = offset
        self.max_bytes = max_bytes


# One session's outgoing messages; None ends the stream.
LinkQueue = asyncio.Queue[Command | ReadLogRequest | HeartbeatAnswer | None]


class AgentLinks:
    """Each queue belongs to one session of a node (its epoch): a new Register gets a
    new queue, and what was queued for the old session is never delivered on the new
    one (registration recomputes what is owed)."""

    def __init__(self) -> None:
        self._queues: dict[str, LinkQueue] = {}
        # request id -> (the node asked, its answer to come). Random ids, and only the
        # node asked may answer: another node must not put words in this one's log.
        self._pending_logs: dict[int, tuple[str, asyncio.Future[tuple[bytes, bool, int]]]] = {}

    def attach(self, node: str) -> LinkQueue:
        """A new stream for `node`; an older one still open is told to end."""
        old = self._queues.get(node)
        if old is not None:
            old.put_nowait(None)
        queue: LinkQueue = asyncio.Queue()
        self._queues[node] = queue
        return queue

    def close(self, node: str) -> None:
        """End the node's stream (the agent reconnects and registers again)."""
        queue = self._queues.pop(node, None)
        if queue is not None:
            queue.put_nowait(None)

    def connected(self, node: str) -> bool:
        return node in self._queues

    def detach(self, node: str, queue: LinkQueue) -> bool:
        """True when `queue` was the node's current stream (so the node is now gone)."""
        if self._queues.get(node) is queue:
            del self._queues[node]
            return True
        return False

    def send(self, node: str, command: Command) -> None:
        # A command for a node that is not connected is dropped on purpose: when
        # the agent reconnects, registration compares what it runs with what the
        # store says and sends what is still owed (nodes.register).
        queue = self._queues.get(node)
        if queue is not None:
            queue.put_nowait(command)

    def send_all(self, outbox: Outbox) -> None:
        for node, command in outbox:
            self.send(node, command)

    async def read_log(
        self, node: str, job_id: int, offset: int, max_bytes: int, timeout_s: float = 10.0
    ) -> tuple[bytes, bool, int]:
        queue = self._queues.get(node)
        if queue is None:
            raise NodeNotConnected(node)
        request = ReadLogRequest(secrets.randbits(63), job_id, offset, max_bytes)
        future: asyncio.Future[tuple[bytes, bool, int]] = asyncio.get_running_loop().create_future()
        self._pending_logs[request.request_id] = (node, future)
        queue.put_nowait(request)
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending_logs.pop(request.request_id, None)

    def log_answer(
        self, node: str, request_id: int, data: bytes, found: bool, next_offset: int
    ) -> None:
        pending = self._pending_logs.get(request_id)
        if pending is None or pending[0] != node:
            return  # not asked of this node: ignored
        future = pending[1]
        if not future.done():
            future.set_result((data, found, next_offset))
