"""Binding the daemon's HTTP application (--http-listen), with the router's guards
(schedulerd/router/listen.py): a cap on open connections and a deadline for a
request's headers, so that idle or slow callers cannot hold the daemon's file
descriptors."""

from __future__ import annotations

import logging

from aiohttp import web

from schedulerd.hostport import split_host_port
from schedulerd.router.listen import CappedSite, over_cap_answer, server_options

log = logging.getLogger("schedulerd.web")

MAX_CONNECTIONS = 256
HEADER_TIMEOUT_S = 10.0
SHUTDOWN_S = 2.0
OVER_CAP_ANSWER = over_cap_answer(b'{"error": "the daemon\'s HTTP port has too many connections"}')


class HttpServer:
    def __init__(self, app: web.Application, address: str) -> None:
        self.address = address
        self.host, self.port = split_host_port(address)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=SHUTDOWN_S,
            **server_options(HEADER_TIMEOUT_S),
        )

    async def start(self) -> int:
        """Listen; the port bound (the one asked, or the one chosen for port 0)."""
        await self._runner.setup()
        site = CappedSite(
            self._runner,
            self.host,
            self.port,
            MAX_CONNECTIONS,
            OVER_CAP_ANSWER,
            f"the HTTP port's cap of {MAX_CONNECTIONS}",
        )
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = int(sockets[0].getsockname()[1])
        log.info("serving HTTP (/metrics, /healthz, /readyz) on %s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
