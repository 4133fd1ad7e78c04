"""Binding the daemon's HTTP application (--http-listen), with the router's guards
(schedulerd/router/listen.py): a cap on open connections and a deadline for a
request's headers, so that idle or slow callers cannot hold the daemon's file
descriptors; and the gRPC listener's rule (daemon/listeners.py): the port serves no TLS
and takes the dashboard's token logins and session cookies, so an address that is not
loopback is refused unless --insecure, which logs a WARNING."""

from __future__ import annotations

import logging

from aiohttp import web

from schedulerd.client import is_local_address
from schedulerd.hostport import split_host_port
from schedulerd.router.listen import CappedSite, over_cap_answer, server_options

log = logging.getLogger("schedulerd.web")

MAX_CONNECTIONS = 256
HEADER_TIMEOUT_S = 10.0
SHUTDOWN_S = 2.0
OVER_CAP_ANSWER = over_cap_answer(b'{"error": "the daemon\'s HTTP port has too many connections"}')


class HttpServer:
    def __init__(self, app: web.Application, address: str, insecure: bool = False) -> None:
        self.address = address
        self.host, self.port = split_host_port(address)
        self.plaintext_remote = not is_local_address(address)
        if self.plaintext_remote and not insecure:
            raise SystemExit(
                f"refusing to serve HTTP on {address} without TLS: the dashboard's token "
                "logins (/ui/) and session cookies would cross the network in clear text. "
                "Bind --http-listen to loopback (and put a TLS proxy in front), or give "
                "--insecure on a network you trust"
            )
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
        if self.plaintext_remote:
            log.warning(
                "serving HTTP on %s:%d WITHOUT TLS (--insecure): the dashboard's token "
                "logins (/ui/) and session cookies cross the network in clear text",
                self.host,
                self.port,
            )
        log.info("serving HTTP (/metrics, /healthz, /readyz, /ui/) on %s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
