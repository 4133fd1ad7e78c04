"""Who a caller is, as proven by a credential (never by a request field)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    ANONYMOUS = "anonymous"
    USER = "user"
    NODE = "node"


class Credential(enum.Enum):
    NONE = "none"
    CERTIFICATE = "certificate"  # an mTLS client certificate of the cluster CA
    TOKEN = "token"  # a bearer token the daemon signed (schedctl token create)
    LOCAL_UID = "local-uid"  # the uid the kernel reports for a loopback peer
    VOUCHED = "node-vouched"  # a node's agent vouches for the uid on its Unix socket


class Scope(enum.Enum):
    """What a token may be used for; a token without scopes carries all its holder's
    rights. Scopes only narrow: they never add a right the holder lacks."""

    SUBMIT = "submit"  # submit and cancel jobs
    READ = "read"  # see jobs, their logs, consumers, nodes, the policy
    ADMIN = "admin"  # the holder's admin rights (policy, nodes, tokens, audit, others' jobs)
    EXPERIMENTS = "experiments"  # create and stop experiments, report trials
    SERVICES = "services"  # create, change and delete inference services
    INVOKE = "invoke"  # send requests to inference services through the router
    ROUTER = "router"  # the router's own calls (a cluster admin's token)


SCOPE_NAMES = tuple(s.value for s in Scope)


@dataclass(frozen=True)
class Identity:
    name: str  # a user name, or a node name for Kind.NODE
    kind: Kind
    credential: Credential
    # None: unrestricted. A token's scopes otherwise.
    scopes: frozenset[Scope] | None = None
    token_id: str = ""
    # Proven by the kernel of the daemon's own machine (a loopback peer's uid).
    local: bool = False
    uid: int | None = None
    vouched_by: str = ""  # the node whose agent vouched for this user

    @property
    def label(self) -> str:
        """How logs and the audit name it: `alice`, `node:n1`, `anonymous`."""
        if self.kind is Kind.NODE:
            return f"node:{self.name}"
        return self.name if self.kind is Kind.USER else "anonymous"

    def allows(self, scope: Scope) -> bool:
        return self.scopes is None or scope in self.scopes


ANONYMOUS = Identity("", Kind.ANONYMOUS, Credential.NONE)
