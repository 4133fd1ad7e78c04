"""Bearer tokens: JWTs the daemon signs (HMAC-SHA256, PyJWT) with a key of its own.

A token names its user (or node), its scopes, its expiry and an id. The id is what
makes it revocable: the daemon keeps every token's record and refuses an id it does
not know or that was revoked, so deleting the key file (docs/security.md: rotation)
or revoking one id ends tokens at once, whatever their expiry says.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import jwt

from schedulerd.auth.identity import Scope

ALGORITHM = "HS256"
ISSUER = "schedulerd"
KEY_BYTES = 32
# A token is an Authorization header: anything longer than this is not one of ours,
# and is refused before any parsing.
MAX_TOKEN_CHARS = 4096


class BadToken(Exception):
    """Why a presented token is refused (shown to the caller: it holds no secret)."""


@dataclass(frozen=True)
class TokenClaims:
    id: str
    subject: str
    node: bool
    scopes: frozenset[Scope] | None  # None: unrestricted
    issued_at: float
    expires_at: float


def load_or_create_key(path: Path) -> bytes:
    """The signing key, made on first start: random, 0600, never overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def _read_key(path: Path) -> bytes:
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path}: the signing key must not be readable by others")
    key = bytes.fromhex(path.read_text().strip())
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path}: the signing key is too short")
    return key


def new_token_id() -> str:
    return secrets.token_hex(8)


def sign(key: bytes, claims: TokenClaims) -> str:
    payload: dict[str, object] = {
        "iss": ISSUER,
        "jti": claims.id,
        "sub": claims.subject,
        "kind": "node" if claims.node else "user",
        "iat": int(claims.issued_at),
        "exp": int(claims.expires_at),
    }
    if claims.scopes is not None:
        payload["scope"] = sorted(s.value for s in claims.scopes)
    return jwt.encode(payload, key, algorithm=ALGORITHM)


def verify(key: bytes, token: str, now: float) -> TokenClaims:
    """The claims of a token this daemon signed and that has not expired at `now`;
    else BadToken. Revocation is the caller's check (it needs the store)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise BadToken(f"the token is longer than {MAX_TOKEN_CHARS} characters")
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            # Times are checked below against the daemon's clock (injected), not PyJWT's.
            options={
                "require": ["exp", "iat", "jti", "sub", "iss"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidTokenError as e:
        raise BadToken(f"invalid token: {e}") from None
    exp, iat = payload["exp"], payload["iat"]
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise BadToken("invalid token: exp and iat must be whole seconds")
    if exp <= now:
        raise BadToken(f"the token expired {now - exp:.0f} s ago")
    kind, subject, token_id = payload.get("kind"), payload["sub"], payload["jti"]
    if kind not in ("user", "node") or not isinstance(subject, str) or not subject:
        raise BadToken("invalid token: no user or node")
    if not isinstance(token_id, str):
        raise BadToken("invalid token: bad id")
    raw = payload.get("scope")
    scopes: frozenset[Scope] | None = None
    if raw is not None:
        try:
            scopes = frozenset(Scope(s) for s in raw)
        except (TypeError, ValueError):
            raise BadToken("invalid token: unknown scope") from None
    return TokenClaims(token_id, subject, kind == "node", scopes, float(iat), float(exp))


# Tokens remembered by VerifiedTokens: clients reuse one token for thousands of calls.
VERIFIED_KEEP = 4096


class VerifiedTokens:
    """`verify`, remembered per token: the HS256 check and the JWT parse cost about
    90 µs a call (a tenth of a durable SubmitJob's budget, issue 15), and a client
    sends the same token on every call. A token is remembered only once it verified
    under this key, and its expiry is checked again on every use; revocation stays
    the caller's check, on every call. Bounded: past VERIFIED_KEEP tokens, forgotten
    all at once (they verify again)."""

    def __init__(self) -> None:
        self._key = b""
        self._claims: dict[str, TokenClaims] = {}

    def known(self, key: bytes, token: str, now: float) -> TokenClaims | None:
        """The claims of a token verified before under `key`, or None (not seen);
        BadToken if it has expired since."""
        if key != self._key:
            return None
        claims = self._claims.get(token)
        if claims is not None and claims.expires_at <= now:
            raise BadToken(f"the token expired {now - claims.expires_at:.0f} s ago")
        return claims

    def verify(self, key: bytes, token: str, now: float) -> TokenClaims:
        claims = verify(key, token, now)
        if key != self._key:
            self._key, self._claims = key, {}
        if len(self._claims) >= VERIFIED_KEEP:
            self._claims.clear()
        self._claims[token] = claims
        return claims
