"""The router's listening socket, guarded against callers that hold connections without
finishing requests (slowloris): each one costs a file descriptor, and a router out of
them answers nobody, /healthz included.

Three guards (docs/router.md, "Limits"):

- A deadline for a request's headers (--header-timeout): aiohttp's server has no header
  timeout of its own, but its keep-alive timer is one. It runs from the connection's
  start and from the end of each answer, and closes the connection when it fires while
  the handler still waits for a complete request head (a request being handled is never
  cut by it). So keepalive_timeout=HEADER_TIMEOUT_S bounds a connection that sends
  nothing, half its headers, or idles between requests. The deadline for a body is the
  proxy's (schedulerd/router/body.py).
- A cap on open client connections (--max-connections): the protocol factory below
  counts them; past the cap a new connection gets a 503 and is closed at once, so that
  file descriptors are never exhausted and the connections already open keep working.
  It is kept under the process's file limit (raised to its hard limit at start), less a
  reserve and one upstream connection per client connection.
- Accept errors (EMFILE and the like, should the limit be reached all the same) are
  logged once a minute with a count, not once per failed accept with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from aiohttp import web

from schedulerd.router.link import RateLimitedLog

log = logging.getLogger("schedulerd.router.listen")

HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 10_000
# File descriptors kept for everything but client connections and their upstream ones:
# the daemon's channel, probes (64 at once), logs, the listening socket.
RESERVE_FDS = 256


def over_cap_answer(body: bytes) -> bytes:
    """The whole 503 a connection past the cap gets, with this JSON body."""
    return (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"Content-Type: application/json; charset=utf-8\r\n"
        b"Retry-After: 1\r\n"
        b"Connection: close\r\n"
        b"Content-Length: %d\r\n"
        b"\r\n%s" % (len(body), body)
    )


# The router's; another server on CappedSite (the daemon's HTTP port) names itself.
OVER_CAP_ANSWER = over_cap_answer(
    b'{"error": "the router has too many connections", "service": null}'
)
ACCEPT_ERROR = "socket.accept() out of system resource"  # asyncio's own words


def raise_nofile_limit() -> int:
    """The soft RLIMIT_NOFILE raised to the hard one (as far as allowed); the soft limit
    now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the file limit from %d to %d: %s", soft, target, e)
    return soft


def connection_cap(wanted: int, nofile: int) -> int:
    """--max-connections, lowered to what the file limit allows: each client connection
    may hold one to a replica too, and RESERVE_FDS are for the rest."""
    return max(1, min(wanted, (nofile - RESERVE_FDS) // 2))


class _Counted(asyncio.Protocol):
    """aiohttp's handler for one connection, counted until the connection is lost.
    Passes on each call asyncio makes on a protocol (aiohttp's RequestHandler is a plain
    asyncio.Protocol, not a BufferedProtocol)."""

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap) -> None:
        self._inner = inner
        self._cap: ConnectionCap | None = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._cap is not None:
            self._cap.open -= 1
            self._cap = None
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Refused(asyncio.Protocol):
    """A connection past the cap: a 503 and the close, without reading anything (a
    client that sent its request already may see a reset instead: its bytes are left
    unread, and waiting to read them would hold the descriptor the cap is saving)."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._answer)
        transport.close()


class ConnectionCap:
    """The protocol factory of the listening socket: aiohttp's own (web.Server), up to
    `limit` connections open at once. A connection counts from the factory's call (which
    asyncio makes, one accepted socket at a time, right before creating its transport:
    a burst of accepts cannot overshoot) to its connection_lost. (Should asyncio fail
    to create the transport, the count keeps one too many: that fails only when memory
    or descriptors are out, and costs one connection of the cap.)"""

    def __init__(
        self,
        server: web.Server,
        limit: int,
        answer: bytes = OVER_CAP_ANSWER,
        limit_name: str = "--max-connections",
    ) -> None:
        self._server = server
        self.limit = limit
        self.answer = answer
        self.limit_name = limit_name
        self.open = 0
        self.refused = 0
        self._trouble = RateLimitedLog(logger=log)

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            self.refused += 1
            self._trouble.warning(
                "cap",
                "%d connections open, at %s: new ones get 503",
                self.open,
                self.limit_name,
            )
            return _Refused(self.answer)
        self.open += 1
        return _Counted(self._server(), self)


class CappedSite(web.BaseSite):
    """web.TCPSite with ConnectionCap as its protocol factory (`answer`: the 503 past
    the cap, `limit_name`: the cap in the log's warning; the router's by default)."""

    __slots__ = ("_host", "_port", "cap")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        max_connections: int,
        answer: bytes = OVER_CAP_ANSWER,
        limit_name: str = "--max-connections",
    ):
        super().__init__(runner)
        self._host = host
        self._port = port
        assert runner.server is not None
        self.cap = ConnectionCap(runner.server, max_connections, answer, limit_name)

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.cap,
            self._host,
            self._port,
            reuse_address=True,
        )


def server_options(header_timeout_s: float) -> dict[str, Any]:
    """The web.AppRunner options of the guards above (keepalive_timeout: the header
    deadline, as the module's doc says)."""
    return {"keepalive_timeout": header_timeout_s}


class AcceptErrors:
    """The event loop's exception handler: asyncio's "socket.accept() out of system
    resource" (it retries the accept a second later) is logged once a minute with a count
    and no traceback; anything else goes to the default handler."""

    def __init__(self) -> None:
        self._trouble = RateLimitedLog(logger=log)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_ERROR:
            error = context.get("exception")
            self._trouble.warning("accept", "cannot accept connections: %s", error)
            return
        loop.default_exception_handler(context)
