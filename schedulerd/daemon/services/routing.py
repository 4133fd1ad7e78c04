"""The Routing service: what the router (schedulerd-router) asks of the daemon — the
route table, whether an HTTP caller may use a service — and the load it reports
(docs/serve.md). The router's credential is a cluster admin's, with scope "router"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from schedulerd.api.v1 import serving_pb2 as pb
from schedulerd.api.v1 import serving_pb2_grpc
from schedulerd.auth.authorize import NOTHING, Action, Target, authorize
from schedulerd.auth.identity import Kind
from schedulerd.daemon.gate import Gate, Unauthenticated
from schedulerd.daemon.serving import ServiceController
from schedulerd.store.serving import ServiceState

# How long the router may keep an answer: a revoked token or a policy change that
# removes a user reaches the router within this.
ACCESS_CACHE_S = 30.0


class RoutingService(serving_pb2_grpc.RoutingServicer):
    def __init__(self, controller: ServiceController, gate: Gate) -> None:
        self.ctl = controller
        self.gate = gate

    async def WatchRoutes(
        self, request: pb.WatchRoutesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RouteTable]:
        await self.gate.check(context, Action.WATCH_ROUTES, NOTHING)
        changed = asyncio.Event()
        self.ctl.route_watchers.append(changed.set)
        try:
            while True:
                changed.clear()
                yield self.ctl.table
                await changed.wait()
        finally:
            self.ctl.route_watchers.remove(changed.set)

    async def ReportLoad(
        self, request: pb.LoadReport, context: grpc.aio.ServicerContext
    ) -> pb.LoadReportAck:
        await self.gate.check(context, Action.REPORT_LOAD, NOTHING)
        self.ctl.report_load(request)
        return pb.LoadReportAck()

    async def CheckAccess(
        self, request: pb.CheckAccessRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckAccessResponse:
        await self.gate.check(context, Action.CHECK_ACCESS, NOTHING)
        svc = self.ctl.find(request.service)
        if svc is None or svc.state is ServiceState.DELETED:
            return _answer(404, f"no service {request.service!r}")
        if svc.spec.public:
            return _answer(200, "a public service")
        if not request.token:
            return _answer(401, "a bearer token is required")
        try:
            who = self.gate.identify_bearer(request.token)
        except Unauthenticated as e:
            return _answer(401, f"credential refused: {e}")
        if who.kind is not Kind.USER:
            return _answer(403, f"{who.label}'s credential does not use services")
        target = Target(svc.spec.consumer, owner=svc.spec.user)
        decision = authorize(who, Action.INVOKE_SERVICE, target, self.gate.rules())
        if not decision.allowed:
            return _answer(403, decision.reason)
        return _answer(200, "allowed", who.name)


def _answer(status: int, reason: str, user: str = "") -> pb.CheckAccessResponse:
    return pb.CheckAccessResponse(
        allowed=status == 200,
        http_status=status,
        reason=reason,
        user=user,
        cache_s=ACCESS_CACHE_S,
    )
