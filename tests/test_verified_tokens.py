"""Verified tokens remembered (auth/tokens.py: VerifiedTokens): a token seen before
skips the signature check only; its expiry still ends it, a token signed with another
key is never taken for it, and the gate still refuses it once revoked."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedulerd.auth.tokens import BadToken, TokenClaims, VerifiedTokens, sign
from schedulerd.daemon.gate import Gate, Unauthenticated
from schedulerd.daemon.tokenbook import TokenBook
from schedulerd.store import Store
from schedulerd.store.security import SecurityStore

KEY = b"k" * 32


def _token(key: bytes = KEY, expires: float = 2000.0) -> str:
    return sign(key, TokenClaims("t1", "alice", False, None, 1000.0, expires))


def test_a_remembered_token_expires_all_the_same() -> None:
    seen = VerifiedTokens()
    token = _token()
    assert seen.known(KEY, token, 1500.0) is None  # not seen yet
    assert seen.verify(KEY, token, 1500.0).subject == "alice"
    assert seen.known(KEY, token, 1500.0) is not None
    with pytest.raises(BadToken, match="expired"):
        seen.known(KEY, token, 2000.0)


def test_a_token_is_remembered_for_its_key_only() -> None:
    seen = VerifiedTokens()
    token = _token()
    seen.verify(KEY, token, 1500.0)
    assert seen.known(b"other" * 8, token, 1500.0) is None  # the key was rotated
    with pytest.raises(BadToken):
        seen.verify(b"other" * 8, token, 1500.0)


def test_a_bad_token_is_never_remembered() -> None:
    seen = VerifiedTokens()
    forged = _token(b"x" * 32)
    with pytest.raises(BadToken):
        seen.verify(KEY, forged, 1500.0)
    assert seen.known(KEY, forged, 1500.0) is None


def test_the_gate_refuses_a_remembered_token_once_revoked(tmp_path: Path) -> None:
    store = SecurityStore(Store(tmp_path / "s.db"))
    book = TokenBook(tmp_path / "key", store)
    _, secret = book.mint("alice", False, None, 3600.0, "root", 1000.0)
    gate = Gate(book, None, (), lambda: None, lambda: (), clock=lambda: 1500.0)  # type: ignore[arg-type]
    assert gate.identify_bearer(secret).name == "alice"
    assert gate.identify_bearer(secret).name == "alice"  # remembered
    record = next(iter(book.records.values()))
    book.revoke(record.id, 1600.0)
    with pytest.raises(Unauthenticated, match="revoked"):
        gate.identify_bearer(secret)
