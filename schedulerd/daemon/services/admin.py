"""The Admin service: the policy, the consumer tree and the nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc

from schedulerd import core
from schedulerd.api.v1 import admin_pb2, admin_pb2_grpc
from schedulerd.auth.authorize import NOTHING, Action, Target
from schedulerd.core.windows import policy_at
from schedulerd.daemon import nodes
from schedulerd.daemon.change import Change
from schedulerd.daemon.convert import consumer_to_pb, node_to_pb, policy_to_pb, pool_status_to_pb
from schedulerd.daemon.gate import Gate
from schedulerd.daemon.links import AgentLinks
from schedulerd.daemon.loop import SchedulingLoop
from schedulerd.daemon.policy_swap import API_SOURCE, PolicyRefused, put_in_force, refusal
from schedulerd.daemon.services.errors import abort
from schedulerd.daemon.services.tokens import TokenService
from schedulerd.daemon.state import ClusterState
from schedulerd.policy import PolicyError, load_policy
from schedulerd.store import StoreUnavailable

MAX_POLICY_CHARS = 1024 * 1024
# The latest `at` of a dry run: datetime reaches year 9999, and a window's next
# boundary may be a week or two later.
LATEST_AT = 253_370_764_800.0  # 9999-01-01T00:00Z


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(
        self, state: ClusterState, loop: SchedulingLoop, links: AgentLinks, gate: Gate
    ) -> None:
        self.state = state
        self.loop = loop
        self.links = links
        self.gate = gate
        self.tokens = TokenService(gate)

    async def GetPolicy(
        self, request: admin_pb2.GetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Policy:
        await self.gate.check(context, Action.GET_POLICY, NOTHING)
        assert self.state.policy_record is not None
        return policy_to_pb(self.state.policy_record)

    async def ApplyPolicy(
        self, request: admin_pb2.ApplyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ApplyPolicyResponse:
        action = Action.DRY_RUN_POLICY if request.dry_run else Action.APPLY_POLICY
        await self.gate.check(context, action, NOTHING)
        source = request.source_name or "<api>"
        if len(request.text) > MAX_POLICY_CHARS or len(source) > 256:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"text: a policy is at most {MAX_POLICY_CHARS} characters, "
                "source_name at most 256; nothing was applied",
            )
        try:
            # Off the event loop: a big or nasty file must not stall scheduling.
            policy = await asyncio.to_thread(load_policy, request.text, source)
        except PolicyError as e:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        why = refusal(self.state, policy, source)
        if why is not None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, why)
        if request.HasField("at") and not request.dry_run:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "at: only with dry_run (a policy is applied now); nothing was applied",
            )
        # Entitlements under the new policy, from the same pure core the loop runs: with
        # `at`, the jobs as they are now under the time windows in force then.
        now = self.state.clock()
        at = request.at.seconds + request.at.nanos / 1e9 if request.HasField("at") else now
        if not 0 <= at <= LATEST_AT:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "at: a time from 1970 to 9998; nothing was applied",
            )
        resolved = policy_at(policy, at)
        snapshot = self.state.snapshot()
        plan = await asyncio.to_thread(core.decide, snapshot, resolved, now)
        consumers = _statuses(resolved, plan.consumers, plan.pools, self.state.pool_gpus())
        if request.dry_run:
            return admin_pb2.ApplyPolicyResponse(applied=False, consumers=consumers)
        try:
            record = put_in_force(
                self.state, policy, request.text, API_SOURCE + (request.source_name or "-")
            )
        except PolicyRefused as e:  # jobs came meanwhile for a consumer it drops
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except StoreUnavailable as e:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"policy not applied: {e}")
        self.loop.wake()
        return admin_pb2.ApplyPolicyResponse(
            applied=True, version=record.version, consumers=consumers
        )

    async def ListConsumers(
        self, request: admin_pb2.ListConsumersRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListConsumersResponse:
        await self.gate.check(context, Action.LIST_CONSUMERS, NOTHING)
        assert self.state.policy is not None
        # Owned, share and limit as in force now (time windows: core/windows.py).
        policy = policy_at(self.state.policy, self.state.clock())
        states = self.state.consumer_states
        pool_gpus = self.state.pool_gpus()
        statuses = _statuses(policy, states, self.state.pool_states, pool_gpus)
        return admin_pb2.ListConsumersResponse(
            consumers=statuses, total_gpus=sum(pool_gpus.values())
        )

    async def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListNodesResponse:
        await self.gate.check(context, Action.LIST_NODES, NOTHING)
        holders = {
            (p.node, i): job.id
            for job in self.state.jobs.values()
            for p in job.parts
            for i in p.gpu_indices
        }
        return admin_pb2.ListNodesResponse(
            nodes=[
                node_to_pb(n, self.state.liveness(n), holders) for n in self.state.nodes.values()
            ]
        )

    async def DrainNode(
        self, request: admin_pb2.DrainNodeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Node:
        await self.gate.check(context, Action.DRAIN_NODE, Target(node=request.node))
        if len(request.reason) > 1024:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "reason: at most 1024 chars")
        return await self._set_drain(request.node, True, request.reason or "drained", context)

    async def UndrainNode(
        self, request: admin_pb2.UndrainNodeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Node:
        await self.gate.check(context, Action.UNDRAIN_NODE, Target(node=request.node))
        return await self._set_drain(request.node, False, "", context)

    async def _set_drain(
        self, name: str, drained: bool, reason: str, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Node:
        """Draining stops new placements; jobs already there run to their end."""
        if name not in self.state.nodes:
            await self._no_node(name, context)
        ch = Change(self.state)
        node = ch.node(name)
        node.drained, node.drain_reason = drained, reason
        ch.event(0, "drain" if drained else "undrain", name)
        try:
            ch.commit()
        except StoreUnavailable as e:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"node {name} unchanged: {e}")
        self.loop.wake()
        live = self.state.nodes[name]
        return node_to_pb(live, self.state.liveness(live), {})

    async def ForgetNode(
        self, request: admin_pb2.ForgetNodeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ForgetNodeResponse:
        """ "I powered it off": its processes are gone, so its jobs are requeued and its
        fences lifted. Refused while its agent is connected: then it is not off."""
        await self.gate.check(context, Action.FORGET_NODE, Target(node=request.node))
        name = request.node
        if name not in self.state.nodes:
            await self._no_node(name, context)
        if name in self.state.connected:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node {name}: its agent is connected, so it is not powered off; "
                "stop the agent (or drain the node) first",
            )
        try:
            requeued, released, commands = nodes.forget(self.state, name)
        except StoreUnavailable as e:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"node {name} not forgotten: {e}")
        self.links.send_all(commands)
        self.loop.wake()
        return admin_pb2.ForgetNodeResponse(requeued_job_ids=requeued, released_gpus=released)

    async def _no_node(self, name: str, context: grpc.aio.ServicerContext) -> None:
        known = ", ".join(sorted(self.state.nodes)[:20]) or "none"
        await abort(context, grpc.StatusCode.NOT_FOUND, f"no node {name[:64]!r} (known: {known})")

    # Tokens, identity and the audit trail (services/tokens.py).

    async def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateTokenResponse:
        return await self.tokens.create(request, context)

    async def ListTokens(
        self, request: admin_pb2.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListTokensResponse:
        return await self.tokens.list(request, context)

    async def RevokeToken(
        self, request: admin_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Token:
        return await self.tokens.revoke(request, context)

    async def WhoAmI(
        self, request: admin_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.WhoAmIResponse:
        return await self.tokens.whoami(context)

    async def ListAudit(
        self, request: admin_pb2.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAuditResponse:
        return await self.tokens.audit(request, context)


def _statuses(
    policy: core.Policy,
    states: Mapping[core.ConsumerPath, core.ConsumerState],
    pools: Mapping[str, Mapping[core.ConsumerPath, core.ConsumerState]],
    pool_gpus: Mapping[str, int],
) -> list[admin_pb2.ConsumerStatus]:
    out = []
    for path, spec in policy.consumers.items():
        msg = consumer_to_pb(spec, states.get(path), policy.is_leaf(path))
        for pool, by_path in sorted(pools.items()):
            msg.pools.append(
                pool_status_to_pb(
                    pool, policy.in_pool(pool).consumers[path], by_path.get(path), pool_gpus
                )
            )
        out.append(msg)
    return out
