"""The Admin RPCs about credentials: tokens (create, list, revoke), WhoAmI, and the
audit trail. Part of the Admin service (services/admin.py delegates here)."""

from __future__ import annotations

import math
import re

import grpc

from schedulerd.api.v1 import admin_pb2
from schedulerd.auth.authorize import NOTHING, Action, Target, is_cluster_admin
from schedulerd.auth.identity import SCOPE_NAMES, Kind, Scope
from schedulerd.daemon.convert import timestamp
from schedulerd.daemon.gate import Gate
from schedulerd.daemon.services.errors import abort
from schedulerd.store import StoreUnavailable
from schedulerd.store.security import AUDIT_PAGE_CAP, TokenRecord

MIN_TTL_S = 60.0
MAX_TTL_S = 366 * 86400.0
USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class TokenService:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.book = gate.tokens

    async def create(
        self, request: admin_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateTokenResponse:
        who = await self.gate.who(context, Action.CREATE_TOKEN)
        subject = request.user or (who.name if not request.node else "")
        problem = _token_problem(request, subject)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{problem}; no token made")
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
        record = self.book.records.get(request.id[:64])
        if record is None:
            # The same answer as for someone else's token: ids are not to be probed.
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
        )

    async def audit(
        self, request: admin_pb2.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAuditResponse:
        await self.gate.check(context, Action.LIST_AUDIT, NOTHING)
        self.gate.audit.flush()  # what happened just now is part of the answer
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


def _token_problem(request: admin_pb2.CreateTokenRequest, subject: str) -> str | None:
    if request.node:
        if not NODE_NAME.fullmatch(subject):
            return "user: a node token needs the node's name (letters, digits, '_.-', ≤ 63)"
    elif not USER_NAME.fullmatch(subject):
        return f"user: {subject[:40]!r} is not a user name ([a-z_][a-z0-9_.-], at most 32)"
    ttl = request.ttl_seconds
    if not math.isfinite(ttl) or not MIN_TTL_S <= ttl <= MAX_TTL_S:
        return f"ttl_seconds: must be between {MIN_TTL_S:g} s and 366 days"
    if len(request.scopes) > len(SCOPE_NAMES):
        return "scopes: too many"
    unknown = [s[:20] for s in request.scopes if s not in SCOPE_NAMES]
    if unknown:
        return f"scopes: unknown {', '.join(unknown)} (known: {', '.join(SCOPE_NAMES)})"
    return None


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
