"""The daemon's tokens: its signing key, and the record of every token it signed
(what revocation and `schedctl token list` read). Changes are committed to the store
first, then applied to memory (ARCHITECTURE: check, commit, then apply)."""

from __future__ import annotations

from pathlib import Path

from schedulerd.auth.identity import Scope
from schedulerd.auth.tokens import TokenClaims, load_or_create_key, new_token_id, sign
from schedulerd.store.security import SecurityStore, TokenRecord


class TokenBook:
    def __init__(self, key_path: Path, store: SecurityStore) -> None:
        self.key = load_or_create_key(key_path)
        self.store = store
        self.records = {t.id: t for t in store.load_tokens()}

    def mint(
        self,
        subject: str,
        node: bool,
        scopes: frozenset[Scope] | None,
        ttl_s: float,
        created_by: str,
        now: float,
    ) -> tuple[TokenRecord, str]:
        record = TokenRecord(
            id=new_token_id(),
            subject=subject,
            node=node,
            scopes=None if scopes is None else sorted(s.value for s in scopes),
            created_at=now,
            expires_at=now + ttl_s,
            created_by=created_by,
        )
        secret = sign(
            self.key,
            TokenClaims(record.id, subject, node, scopes, record.created_at, record.expires_at),
        )
        self.store.insert_token(record)
        self.records[record.id] = record
        return record, secret

    def revoke(self, token_id: str, now: float) -> TokenRecord:
        """KeyError for an unknown id; revoking twice keeps the first time."""
        record = self.records[token_id]
        if record.revoked_at is None:
            self.store.revoke_token(token_id, now)
            record.revoked_at = now
        return record

    def refusal(self, token_id: str) -> str | None:
        """Why a validly signed token is nevertheless refused, or None."""
        record = self.records.get(token_id)
        if record is None:
            return f"token {token_id} is not known to this daemon"
        if record.revoked_at is not None:
            return f"token {token_id} was revoked"
        return None
