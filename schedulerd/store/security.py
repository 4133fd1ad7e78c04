"""Tokens and the audit trail in the store (migration 5). The audit is append-only:
nothing in the daemon updates a record, and only retention (the newest million kept,
daemon/audit.py) deletes the oldest."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from schedulerd.store.store import Store

AUDIT_PAGE_CAP = 1000
_INSERT_AUDIT = (
    "INSERT INTO audit (time, identity, credential, action, object, result, detail)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


@dataclass
class TokenRecord:
    id: str
    subject: str
    node: bool
    scopes: list[str] | None  # None: unrestricted
    created_at: float
    expires_at: float
    created_by: str
    revoked_at: float | None = None


@dataclass(frozen=True)
class AuditEntry:
    time: float
    identity: str
    credential: str
    action: str
    object: str
    result: str
    detail: str = ""
    id: int = 0


class SecurityStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    def insert_token(self, token: TokenRecord) -> None:
        with self.store.transaction():
            self.db.table("tokens").insert(_token_row(token))

    def revoke_token(self, token_id: str, at: float) -> None:
        with self.store.transaction():
            self.db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", [at, token_id])

    def load_tokens(self) -> list[TokenRecord]:
        return [_token_from_row(r) for r in self.db.table("tokens").rows_where(order_by="rowid")]

    def add_audit(self, entries: Iterable[AuditEntry]) -> None:
        # One prepared statement for the batch: the records of a burst of submissions
        # come a few hundred at a time (sqlite-utils' insert_all builds each row's SQL).
        rows = [
            (e.time, e.identity, e.credential, e.action, e.object, e.result, e.detail)
            for e in entries
        ]
        if rows:
            with self.store.transaction():
                self.db.conn.executemany(_INSERT_AUDIT, rows)

    def prune_audit(self, keep: int) -> None:
        """Drop all but the newest `keep` records."""
        with self.store.transaction():
            self.db.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", [keep])

    def list_audit(self, limit: int, before_id: int = 0, identity: str = "") -> list[AuditEntry]:
        """Newest first, at most AUDIT_PAGE_CAP."""
        where: list[str] = ["1=1"]
        args: list[object] = []
        if before_id:
            where.append("id < ?")
            args.append(before_id)
        if identity:
            where.append("identity = ?")
            args.append(identity)
        cap = min(limit, AUDIT_PAGE_CAP) if limit else AUDIT_PAGE_CAP
        rows = self.db.table("audit").rows_where(
            " AND ".join(where), args, order_by="id desc", limit=cap
        )
        return [
            AuditEntry(
                r["time"],
                r["identity"],
                r["credential"],
                r["action"],
                r["object"],
                r["result"],
                r["detail"],
                r["id"],
            )
            for r in rows
        ]


def _token_row(t: TokenRecord) -> dict[str, object]:
    return {
        "id": t.id,
        "subject": t.subject,
        "node": int(t.node),
        "scopes": None if t.scopes is None else json.dumps(t.scopes),
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "created_by": t.created_by,
        "revoked_at": t.revoked_at,
    }


def _token_from_row(r: dict[str, object]) -> TokenRecord:
    scopes = r["scopes"]
    return TokenRecord(
        id=str(r["id"]),
        subject=str(r["subject"]),
        node=bool(r["node"]),
        scopes=None if scopes is None else list(json.loads(str(scopes))),
        created_at=float(r["created_at"]),  # type: ignore[arg-type]
        expires_at=float(r["expires_at"]),  # type: ignore[arg-type]
        created_by=str(r["created_by"]),
        revoked_at=None if r["revoked_at"] is None else float(r["revoked_at"]),  # type: ignore[arg-type]
    )
