"""The Admin RPCs about credentials: tokens (create, list, revoke), WhoAmI, and the
audit trail. Part of the Admin service (services/admin.py delegates here)."""

from __future__ import annotations

import grpc

from schedulerd.api.v1 import admin_pb2
from schedulerd.auth.authorize import NOTHING, Action, Rules, Target, is_cluster_admin
from schedulerd.auth.identity import Identity, Kind, Scope
from schedulerd.daemon.convert import timestamp
from schedulerd.daemon.gate import Gate
from schedulerd.daemon.services.errors import abort
from schedulerd.store import StoreUnavailable
from schedulerd.store.security import AUDIT_PAGE_CAP, TokenRecord


class TokenService:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.book = gate.tokens

    async def create(
        self, request: admin_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateTokenResponse:
        who = await self.gate.who(context, Action.CREATE_TOKEN)
        subject = request.user  # its syntax, the ttl and the scopes: checked (bounds.py)
        target = Target(node=subject if request.node else "", user=subject)
        await self.gate.allow(context, who, Action.CREATE_TOKEN, target)
        scopes = frozenset(Scope(s) for s in request.scopes) if request.scopes else None
        if who.scopes is not None:
            # A token's holder (an admin's scoped token) cannot widen what it may do.
            scopes = who.scopes if scopes is None else scopes & who.scopes
        try:
            record, secret = self.book.mint(
                subject, request.node, scopes, request.ttl_seconds, who.label, self.gate.clock()
            )
        except StoreUnavailable as e:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"no token made: {e}")
        self.gate.audit.note(f"token {record.id}")
        return admin_pb2.CreateTokenResponse(token=_token_pb(record), secret=secret)

    async def list(
        self, request: admin_pb2.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListTokensResponse:
        who = await self.gate.who(context, Action.LIST_TOKENS)
        admin = is_cluster_admin(who, self.gate.rules())
        user = request.user if admin else who.name
        await self.gate.allow(context, who, Action.LIST_TOKENS, Target(user=user))
        now = self.gate.clock()
        shown = [
            t
            for t in self.book.records.values()
            if (not user or t.subject == user)
            and (request.include_revoked or (t.revoked_at is None and t.expires_at > now))
        ]
        return admin_pb2.ListTokensResponse(tokens=[_token_pb(t) for t in shown[-1000:]])

    async def revoke(
        self, request: admin_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Token:
        who = await self.gate.who(context, Action.REVOKE_TOKEN)
        if who.kind is not Kind.USER:  # nodes and the anonymous: refused at the door
            await self.gate.allow(context, who, Action.REVOKE_TOKEN, Target(user=who.name))
        record = self.book.records.get(request.id[:64])
        mine = record is not None and (record.subject == who.name and not record.node)
        if record is None or not (mine or is_cluster_admin(who, self.gate.rules())):
            # Someone else's token gets the same answer as none: ids are not to be probed.
            self.gate.audit.refused(
                who, Action.REVOKE_TOKEN, Target(), "NOT_FOUND", "no such token of theirs"
            )
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no token {request.id[:64]!r}")
        target = Target(
            node=record.subject if record.node else "",
            user=record.subject,
        )
        await self.gate.allow(context, who, Action.REVOKE_TOKEN, target)
        self.gate.audit.note(f"token {record.id}")
        try:
            self.book.revoke(record.id, self.gate.clock())
        except StoreUnavailable as e:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"token not revoked: {e}")
        return _token_pb(record)

    async def whoami(self, context: grpc.aio.ServicerContext) -> admin_pb2.WhoAmIResponse:
        who = await self.gate.who(context, Action.WHOAMI)
        rules = self.gate.rules()
        admin_of = (
            []
            if who.kind is not Kind.USER
            else [
                str(path)
                for path in rules.policy.consumers
                if who.name in rules.policy.consumers[path].admins
            ]
        )
        return admin_pb2.WhoAmIResponse(
            identity=who.label,
            kind=who.kind.value,
            credential=who.credential.value,
            cluster_admin=is_cluster_admin(who, rules),
            admin_of=admin_of,
            scopes=sorted(s.value for s in who.scopes or ()),
            submit_to=_submit_to(who, rules),
        )

    async def audit(
        self, request: admin_pb2.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAuditResponse:
        await self.gate.check(context, Action.LIST_AUDIT, NOTHING)
        await self.gate.audit.written()  # what happened just now is part of the answer
        entries = self.gate.audit.store.list_audit(
            min(request.limit or AUDIT_PAGE_CAP, AUDIT_PAGE_CAP),
            request.before_id,
            request.identity[:128],
        )
        return admin_pb2.ListAuditResponse(
            records=[
                admin_pb2.AuditRecord(
                    id=e.id,
                    time=timestamp(e.time),
                    identity=e.identity,
                    credential=e.credential,
                    action=e.action,
                    object=e.object,
                    result=e.result,
                    detail=e.detail,
                )
                for e in entries
            ]
        )


def _token_pb(t: TokenRecord) -> admin_pb2.Token:
    return admin_pb2.Token(
        id=t.id,
        user=t.subject,
        node=t.node,
        scopes=t.scopes or [],
        created_at=timestamp(t.created_at),
        expires_at=timestamp(t.expires_at),
        created_by=t.created_by,
        revoked_at=timestamp(t.revoked_at),
    )


def _submit_to(who: Identity, rules: Rules) -> list[str]:
    """The leaves `who` may submit to (the same rule as a submission's, the policy's
    `users:`), so that a client may pick the only one; nothing for a token that may not
    submit at all."""
    if who.kind is not Kind.USER or not who.allows(Scope.SUBMIT):
        return []
    policy = rules.policy
    return sorted(str(p) for p in policy.leaves() if policy.may_submit(p, who.name))
