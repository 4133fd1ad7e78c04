"""The router's link to the daemon (the Routing service of serving.proto): the route
table's stream, reconnected with backoff; a load report every --report-every seconds;
and access checks for services that are not public.

While the stream is down the router keeps serving with the last table it had: replicas
keep running without the daemon, and the probes still say which of them are ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from schedulerd.api.v1 import serving_pb2, serving_pb2_grpc
from schedulerd.auth.tlsfiles import channel_credentials
from schedulerd.client import read_token_file
from schedulerd.router.access import DaemonUnreachable, Verdict
from schedulerd.router.report import snapshot
from schedulerd.router.state import RouterState
from schedulerd.router.wire import report_to_wire, table_from_wire, verdict_from_wire

log = logging.getLogger("schedulerd.router.link")

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
ACCESS_TIMEOUT_S = 5.0
MAX_RECEIVE_BYTES = 32 * 1024 * 1024  # a table of many services and replicas
LOG_EVERY_S = 60.0  # the same trouble is logged again at most this often


class RateLimitedLog:
    """A warning per kind of trouble at most every LOG_EVERY_S, with how many were left
    out: a daemon down for an hour makes one line a minute, not one a second."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, logger: logging.Logger = log
    ) -> None:
        self._clock = clock
        self._log = logger
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < LOG_EVERY_S:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        left_out = self._quiet.pop(kind, 0)
        self._last[kind] = now
        suffix = f" ({left_out} more like it since)" if left_out else ""
        self._log.warning(message + suffix, *args)

    def recovered(self, kind: str) -> bool:
        """Forget a kind of trouble; whether it had been logged."""
        self._quiet.pop(kind, None)
        return self._last.pop(kind, None) is not None


@dataclass(frozen=True)
class DaemonAddress:
    target: str
    token: str | None = None
    tls: grpc.ChannelCredentials | None = None

    @classmethod
    def of(cls, target: str, token_file: Path | None, ca: Path | None) -> DaemonAddress:
        """From the router's options; CredentialError or CertError name a bad file."""
        token = read_token_file(token_file) if token_file is not None else None
        return cls(target, token, channel_credentials(ca) if ca is not None else None)

    def channel(self) -> grpc.aio.Channel:
        options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
        if self.tls is not None:
            return grpc.aio.secure_channel(self.target, self.tls, options)
        return grpc.aio.insecure_channel(self.target, options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class Link:
    def __init__(
        self, daemon: DaemonAddress, state: RouterState, name: str, report_every_s: float
    ) -> None:
        self.daemon = daemon
        self.state = state
        self.name = name
        self.report_every_s = report_every_s
        self.connected = False  # the route stream is up
        self.trouble = RateLimitedLog()
        self._channel = daemon.channel()
        self._stub = serving_pb2_grpc.RoutingStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def watch_routes(self) -> None:
        """The route table, forever: reconnect with backoff, keep the last table."""
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                call = self._stub.WatchRoutes(
                    serving_pb2.WatchRoutesRequest(router=self.name),
                    metadata=self.daemon.metadata(),
                )
                async for table in call:
                    version, routes = table_from_wire(table)
                    self.state.apply(version, routes)
                    if not self.connected:
                        self.connected = True
                        again = self.trouble.recovered("routes")
                        log.log(
                            logging.WARNING if again else logging.INFO,
                            "route table from the daemon%s: version %d, %d services",
                            " again" if again else "",
                            version,
                            len(routes),
                        )
                    backoff = BACKOFF_FIRST_S
                reason = "the daemon ended the stream"
            except grpc.aio.AioRpcError as e:
                reason = f"{e.code().name}: {e.details()}"
            except Exception as e:  # a bug, or a table we cannot read: keep trying
                log.exception("route table stream")
                reason = repr(e)
            self.connected = False
            self.trouble.warning(
                "routes",
                "route table stream: %s; keeping table version %s, retrying",
                reason,
                self.state.table.version,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def report_load(self) -> None:
        """A report every report_every_s; one that fails is dropped (the next one has
        the totals, and the interval numbers of now are what the autoscaler wants)."""
        timeout = max(1.0, min(5.0, self.report_every_s))
        while True:
            await asyncio.sleep(self.report_every_s)
            snap = snapshot(self.state.table, self.state.stats, self.state.holds)
            if snap is None:
                continue
            try:
                await self._stub.ReportLoad(
                    report_to_wire(self.name, snap),
                    metadata=self.daemon.metadata(),
                    timeout=timeout,
                )
                if self.trouble.recovered("report"):
                    log.warning("load reports reach the daemon again")
            except grpc.aio.AioRpcError as e:
                self.trouble.warning(
                    "report", "load report dropped: %s: %s", e.code().name, e.details()
                )
            except Exception:  # a bug: the next report may do better
                log.exception("load report dropped")

    async def check_access(self, service: str, token: str) -> Verdict:
        """The daemon's CheckAccess (an AskDaemon for CachedAccess)."""
        try:
            answer = await self._stub.CheckAccess(
                serving_pb2.CheckAccessRequest(service=service, token=token),
                metadata=self.daemon.metadata(),
                timeout=ACCESS_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as e:
            self.trouble.warning(
                "access", "access check failed: %s: %s", e.code().name, e.details()
            )
            raise DaemonUnreachable(e.code().name) from None
        return verdict_from_wire(answer)
