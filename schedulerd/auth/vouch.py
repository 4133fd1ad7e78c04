"""Node-vouched credentials: how a user on a node of the cluster needs no setup, as
with munge on a Slurm node.

The agent asks the kernel who is on the other end of its local Unix socket
(SO_PEERCRED) and signs a short-lived credential for that user with a key the daemon
gave its session (Registered.vouch_key). The daemon accepts it while that session
lasts. A node vouches for its own users only as far as the daemon trusts nodes: a
vouched identity is never a cluster admin (root on one node must not own the cluster).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
KID_PREFIX = "vouch:"
TTL_S = 60.0
# A vouched credential is checked against this much clock skew between node and daemon.
SKEW_S = 30.0
MAX_ANSWER_BYTES = 8192
# Where a node's agent serves credentials for its users, unless SCHEDULERD_AUTH_SOCKET says.
DEFAULT_SOCKET = "/run/schedulerd/auth.sock"


class BadVouch(Exception):
    pass


@dataclass(frozen=True)
class Vouched:
    user: str
    uid: int
    node: str


def sign(key: bytes, node: str, user: str, uid: int, now: float) -> str:
    claims = {
        "sub": user,
        "uid": uid,
        "iss": f"node:{node}",
        "iat": int(now),
        "exp": int(now + TTL_S),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": KID_PREFIX + node})


def vouching_node(token: str) -> str | None:
    """The node a credential claims to be vouched by, or None for another kind of token.
    Unverified: it only says which key to verify with."""
    try:
        kid = jwt.get_unverified_header(token).get("kid", "")
    except jwt.InvalidTokenError:
        return None
    if isinstance(kid, str) and kid.startswith(KID_PREFIX):
        return kid[len(KID_PREFIX) :]
    return None


def verify(key: bytes, node: str, token: str, now: float) -> Vouched:
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=f"node:{node}",
            options={
                "require": ["sub", "uid", "iat", "exp"],
                "verify_exp": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidTokenError as e:
        raise BadVouch(f"credential vouched by {node} refused: {e}") from None
    exp, iat, user, uid = claims["exp"], claims["iat"], claims["sub"], claims["uid"]
    if not all(isinstance(v, int) for v in (exp, iat, uid)) or not isinstance(user, str):
        raise BadVouch(f"credential vouched by {node} refused: malformed")
    if exp <= now - SKEW_S or iat > now + SKEW_S or exp - iat > TTL_S:
        raise BadVouch(f"credential vouched by {node} expired or not yet valid")
    return Vouched(user, uid, node)


def fetch(path: str, timeout_s: float = 5.0) -> str:
    """A credential for the calling process's user from the node's agent (its Unix
    socket, agent/vouch.py); BadVouch with the agent's reason when there is none."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(path)
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_ANSWER_BYTES:
                chunk = s.recv(MAX_ANSWER_BYTES)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise BadVouch(f"the node's agent at {path} did not answer: {e}") from None
    status, _, rest = data.decode("utf-8", "replace").strip().partition(" ")
    if status != "ok" or not rest:
        raise BadVouch(f"the node's agent would not vouch: {rest or 'no answer'}")
    return rest


class CachedVouch:
    """Credentials fetched when needed and reused for half their life."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._token = ""
        self._fresh_until = 0.0

    def __call__(self) -> str:
        if self.clock() >= self._fresh_until:
            self._token = fetch(self.path)
            self._fresh_until = self.clock() + TTL_S / 2
        return self._token
