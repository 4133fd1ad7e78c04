"""The Services service: inference services (docs/serve.md). Thin: the service
controller keeps them; this checks requests, asks the gate and converts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc

from schedulerd.api.v1 import serving_pb2 as pb
from schedulerd.api.v1 import serving_pb2_grpc
from schedulerd.auth.authorize import NOTHING, Action, Target
from schedulerd.auth.identity import Credential, Identity
from schedulerd.core import is_within
from schedulerd.daemon.gate import Gate
from schedulerd.daemon.services.errors import abort
from schedulerd.daemon.serving import NotFound, Refused, ServiceController
from schedulerd.daemon.serving.convert import service_to_pb
from schedulerd.serve.codec import spec_from_pb
from schedulerd.serve.spec import FIXED_FIELDS, SPEC_FIELDS
from schedulerd.store.serving import ServiceRecord, ServiceState

MAX_LISTED = 1000
# What an update may name: every spec field; name, consumer and user must stay as they are.
UPDATABLE = frozenset(SPEC_FIELDS) - FIXED_FIELDS
# What the replicas run, as the service's user: only that user or a cluster admin changes it.
RUN_AS_OWNER = frozenset({"command", "env", "working_dir"})
ZERO_IS_A_VALUE = frozenset(
    {"min_replicas", "scale_to_zero", "public", "priority", "env", "working_dir"}
)


class ServicesService(serving_pb2_grpc.ServicesServicer):
    def __init__(self, controller: ServiceController, gate: Gate) -> None:
        self.ctl = controller
        self.gate = gate

    async def _allowed(
        self, context: grpc.aio.ServicerContext, action: Action, name: str
    ) -> tuple[Identity, ServiceRecord, bool]:
        """The caller, allowed `action` on service `name`, the service, and whether the
        caller sees it in full; NOT_FOUND when there is none."""
        who = await self.gate.who(context, action)
        svc = self.ctl.find(name)
        if svc is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no service {name!r}")
        target = Target(svc.spec.consumer, owner=svc.spec.user)
        decision = await self.gate.allow(context, who, action, target)
        return who, svc, decision.full

    async def CreateService(
        self, request: pb.CreateServiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.Service:
        who = await self.gate.who(context, Action.CREATE_SERVICE)
        target = Target(request.spec.consumer, on_behalf_of=request.spec.user)
        await self.gate.allow(context, who, Action.CREATE_SERVICE, target)
        # Its replicas run as this user: the caller, or whom a cluster admin named.
        request.spec.user = request.spec.user or who.name
        spec = spec_from_pb(request.spec).with_defaults()
        found = self.ctl.check(spec)
        if found:
            listed = "; ".join(f"spec.{field}: {why}" for field, why in found)
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"service refused: {listed}; nothing was created",
            )
        svc = self.ctl.create(spec, vouched=who.credential is Credential.VOUCHED)
        self.gate.audit.note(f"service {svc.spec.name} ({svc.id})")
        return service_to_pb(self.ctl, svc, with_history=True)

    async def GetService(
        self, request: pb.GetServiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.Service:
        _, svc, full = await self._allowed(context, Action.GET_SERVICE, request.name)
        return service_to_pb(self.ctl, svc, with_history=True, redacted=not full)

    async def ListServices(
        self, request: pb.ListServicesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListServicesResponse:
        caller = await self.gate.check(context, Action.LIST_SERVICES, NOTHING)
        out = []
        for svc in self.ctl.listed(request.include_deleted):
            if not is_within(svc.spec.consumer, request.consumer):
                continue
            full = self.gate.sees_in_full(caller.who, svc.spec.consumer, svc.spec.user)
            out.append(service_to_pb(self.ctl, svc, with_history=False, redacted=not full))
        return pb.ListServicesResponse(services=out[-MAX_LISTED:])

    async def UpdateService(
        self, request: pb.UpdateServiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.Service:
        who, svc, _ = await self._allowed(context, Action.UPDATE_SERVICE, request.name)
        paths = list(request.update_mask.paths)
        unknown = sorted(set(paths) - set(SPEC_FIELDS))
        if unknown:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"update_mask: {unknown[0]!r} is not a field of ServiceSpec",
            )
        fields = set(paths) if paths else set(UPDATABLE)
        # Zeros mean the defaults, as at Create (proto3 cannot tell "0" from "not given"),
        # except where a zero is a value one may ask for by name (`serve scale --min 0`).
        raw = spec_from_pb(request.spec)
        given = raw.with_defaults()
        if paths:
            given = replace(given, **{f: getattr(raw, f) for f in fields & ZERO_IS_A_VALUE})
        changed = {f for f in fields if getattr(given, f) != getattr(svc.spec, f)}
        if changed & RUN_AS_OWNER:
            target = Target(svc.spec.consumer, owner=svc.spec.user)
            await self.gate.allow(context, who, Action.CHANGE_SERVICE_COMMAND, target)
        self.gate.audit.note(f"service {svc.spec.name} ({svc.id}): {', '.join(sorted(fields))}")
        try:
            svc = self.ctl.update(request.name, given, fields)
        except NotFound as e:
            await abort(context, grpc.StatusCode.NOT_FOUND, str(e))
        except Refused as e:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"update refused: {e}; nothing changed"
            )
        return service_to_pb(self.ctl, svc, with_history=True)

    async def DeleteService(
        self, request: pb.DeleteServiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.Service:
        _, svc, _ = await self._allowed(context, Action.DELETE_SERVICE, request.name)
        self.gate.audit.note(f"service {svc.spec.name} ({svc.id})")
        if svc.state is not ServiceState.DELETED:
            try:
                svc = self.ctl.delete(request.name)
            except NotFound as e:
                await abort(context, grpc.StatusCode.NOT_FOUND, str(e))
        return service_to_pb(self.ctl, svc, with_history=True)

    async def WatchService(
        self, request: pb.WatchServiceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Service]:
        _, svc, full = await self._allowed(context, Action.WATCH_SERVICE, request.name)
        changed = asyncio.Event()

        def watcher(service_id: int) -> None:
            if service_id == svc.id:
                changed.set()

        self.ctl.watchers.append(watcher)
        try:
            while True:
                changed.clear()
                current = self.ctl.services.get(svc.id) or self.ctl.store.load_service(svc.id)
                assert current is not None
                msg = service_to_pb(self.ctl, current, with_history=True, redacted=not full)
                yield msg
                if current.state is ServiceState.DELETED:
                    return
                # A change, or a second: the load moves without events.
                await asyncio.wait({asyncio.ensure_future(changed.wait())}, timeout=1.0)
                await asyncio.sleep(0.2)  # coalesce a burst of changes into one update
        finally:
            self.ctl.watchers.remove(watcher)
