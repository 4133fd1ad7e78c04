"""The door every RPC passes: who is calling (from a credential), may they (the one
rule, schedulerd/auth/authorize.py), and a record of it in the audit trail.

Identity, strongest proof first:
1. a client certificate of the cluster CA (only the agents' mTLS port asks for one,
   and gRPC has verified it against the CA): the node it names;
2. an `authorization: Bearer` token the daemon signed, not expired, not revoked; or a
   credential a node's agent vouched for (one of its Unix users, auth/vouch.py), while
   that agent's session lasts;
3. a loopback peer: the uid that owns the client socket, as the kernel reports it;
4. otherwise anonymous.
A token that is presented but bad is refused outright (UNAUTHENTICATED), never
quietly replaced by a weaker identity.
"""

from __future__ import annotations

import pwd
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import grpc

from schedulerd.auth import vouch
from schedulerd.auth.authorize import (
    NOTHING,
    Action,
    Decision,
    Denial,
    Rules,
    Target,
    authorize,
)
from schedulerd.auth.ca import CertError, node_name_of
from schedulerd.auth.identity import ANONYMOUS, Credential, Identity, Kind
from schedulerd.auth.peer import loopback_peer_uid
from schedulerd.auth.tokens import BadToken, VerifiedTokens
from schedulerd.core.model import Policy
from schedulerd.daemon.audit import AuditTrail
from schedulerd.daemon.services.errors import abort
from schedulerd.daemon.tokenbook import TokenBook

_DENIAL_CODES = {
    Denial.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Denial.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
}


class Unauthenticated(Exception):
    pass


@dataclass(frozen=True)
class Caller:
    """An identified, authorized call."""

    who: Identity
    decision: Decision


class Gate:
    def __init__(
        self,
        tokens: TokenBook,
        audit: AuditTrail,
        cluster_admins: Collection[str],
        policy: Callable[[], Policy],
        ports: Callable[[], Collection[int]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tokens = tokens
        self.audit = audit
        self.cluster_admins = frozenset(cluster_admins)
        self._policy = policy
        self._ports = ports
        self.clock = clock
        # node -> its live agent session's vouching key (services/agent_link.py).
        self.vouch_keys: dict[str, bytes] = {}
        self._verified = VerifiedTokens()

    def rules(self) -> Rules:
        return Rules(self.cluster_admins, self._policy())

    def identify(self, context: grpc.aio.ServicerContext) -> Identity:
        """Raises Unauthenticated for a credential that is presented but invalid."""
        auth = context.auth_context()
        pem = auth.get("x509_pem_cert")
        if pem:
            try:
                node = node_name_of(pem[0])
            except CertError:
                node = None
            if node is None:
                raise Unauthenticated("the client certificate names no schedulerd node")
            return Identity(node, Kind.NODE, Credential.CERTIFICATE)
        bearer = _bearer(context)
        if bearer is not None:
            return self.identify_bearer(bearer)
        uid = loopback_peer_uid(context.peer(), self._ports())
        if uid is not None:
            return Identity(_user_name(uid), Kind.USER, Credential.LOCAL_UID, local=True, uid=uid)
        return ANONYMOUS

    def identify_bearer(self, bearer: str) -> Identity:
        """Who a bearer credential names: a token the daemon signed, or a node's word for
        one of its users. Raises Unauthenticated. Also for the router, which asks on
        behalf of an HTTP caller (Routing.CheckAccess)."""
        now = self.clock()
        try:
            # A token seen before skips the signature check (auth/tokens.py), not the
            # checks of its expiry and revocation.
            claims = self._verified.known(self.tokens.key, bearer, now)
            if claims is None:
                node = vouch.vouching_node(bearer)
                if node is not None:
                    return self._vouched(node, bearer)
                claims = self._verified.verify(self.tokens.key, bearer, now)
        except BadToken as e:
            raise Unauthenticated(str(e)) from None
        problem = self.tokens.refusal(claims.id)
        if problem:
            raise Unauthenticated(problem)
        kind = Kind.NODE if claims.node else Kind.USER
        return Identity(claims.subject, kind, Credential.TOKEN, claims.scopes, claims.id)

    def _vouched(self, node: str, credential: str) -> Identity:
        key = self.vouch_keys.get(node)
        if key is None:
            raise Unauthenticated(f"node {node[:64]!r} has no live session to vouch with")
        try:
            got = vouch.verify(key, node, credential, self.clock())
        except vouch.BadVouch as e:
            raise Unauthenticated(str(e)) from None
        return Identity(got.user, Kind.USER, Credential.VOUCHED, uid=got.uid, vouched_by=got.node)

    async def check(
        self, context: grpc.aio.ServicerContext, action: Action, target: Target
    ) -> Caller:
        """The caller, allowed to do `action` to `target`; else the call ends with
        UNAUTHENTICATED or PERMISSION_DENIED, and the refusal is audited."""
        who = await self.who(context, action)
        return Caller(who, await self.allow(context, who, action, target))

    async def who(self, context: grpc.aio.ServicerContext, action: Action) -> Identity:
        """The caller's identity; the call ends (UNAUTHENTICATED) for an invalid
        credential, or for none where the action needs one. For actions whose object
        must be looked up first: anonymous callers learn nothing, not even NOT_FOUND."""
        try:
            who = self.identify(context)
        except Unauthenticated as e:
            self.audit.refused(ANONYMOUS, action, NOTHING, "UNAUTHENTICATED", str(e))
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, f"credential refused: {e}")
        if who.kind is Kind.ANONYMOUS and action is not Action.WHOAMI:
            await self.allow(context, who, action, NOTHING)  # refuses, audited
        return who

    async def allow(
        self, context: grpc.aio.ServicerContext, who: Identity, action: Action, target: Target
    ) -> Decision:
        decision = authorize(who, action, target, self.rules())
        if not decision.allowed:
            assert decision.denial is not None
            code = _DENIAL_CODES[decision.denial]
            self.audit.refused(who, action, target, code.name, decision.reason)
            await abort(context, code, decision.reason)
        self.audit.allowed(who, action, target)
        return decision

    def sees_in_full(self, who: Identity, consumer: str, owner: str) -> bool:
        """Whether `who` may see a job of `owner` in `consumer` with its command, env
        and logs (lists show others' jobs redacted)."""
        return authorize(who, Action.GET_JOB, Target(consumer, owner), self.rules()).full


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode("ascii", "replace")
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return "\0malformed"  # fails verification with a clear message
            return token.strip()
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid-{uid}"  # no passwd entry: no policy can name it, so it may do little
