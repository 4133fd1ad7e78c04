"""Credentials one by one: tokens (signed, expiring, scoped) and the loopback uid as the
kernel reports it, for root and for a throwaway user."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from unix_users import throwaway_user

from schedulerd.auth.identity import Scope
from schedulerd.auth.peer import loopback_peer_uid, parse_peer
from schedulerd.auth.tokens import (
    BadToken,
    TokenClaims,
    load_or_create_key,
    sign,
    verify,
)

NOW = 1_800_000_000.0


def _claims(**kw: object) -> TokenClaims:
    base: dict[str, object] = {
        "id": "t1",
        "subject": "alice",
        "node": False,
        "scopes": None,
        "issued_at": NOW,
        "expires_at": NOW + 60,
    }
    base.update(kw)
    return TokenClaims(**base)  # type: ignore[arg-type]


def test_a_signed_token_verifies_until_it_expires(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k")
    token = sign(key, _claims(scopes=frozenset({Scope.READ})))
    claims = verify(key, token, NOW + 59)
    assert (claims.subject, claims.scopes) == ("alice", frozenset({Scope.READ}))
    with pytest.raises(BadToken, match="expired"):
        verify(key, token, NOW + 60)


def test_a_token_of_another_key_or_tampered_is_refused(tmp_path: Path) -> None:
    mine = load_or_create_key(tmp_path / "mine")
    theirs = load_or_create_key(tmp_path / "theirs")
    with pytest.raises(BadToken, match="invalid token"):
        verify(mine, sign(theirs, _claims()), NOW)
    token = sign(mine, _claims())
    head, body, sig = token.split(".")
    with pytest.raises(BadToken):
        verify(mine, f"{head}.{body}x.{sig}", NOW)
    with pytest.raises(BadToken, match="longer"):
        verify(mine, "a" * 5000, NOW)


def test_the_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "k"
    key = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path) == key
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        load_or_create_key(path)


def test_peer_strings_parse() -> None:
    assert parse_peer("ipv4:127.0.0.1:5") is not None
    assert parse_peer("ipv6:[::1]:5") is not None
    assert parse_peer("unix:/tmp/s") is None
    assert parse_peer("ipv4:nonsense") is None


def _listen() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server, server.getsockname()[1]


def test_the_kernel_names_the_uid_of_a_loopback_peer() -> None:
    server, port = _listen()
    with server, socket.create_connection(("127.0.0.1", port)) as client:
        conn, (host, peer_port) = server.accept()
        with conn:
            assert loopback_peer_uid(f"ipv4:{host}:{peer_port}", [port]) == os.geteuid()
            # Not one of our ports: not our caller.
            assert loopback_peer_uid(f"ipv4:{host}:{peer_port}", [port + 1]) is None
        del client


def test_another_users_connection_is_known_as_that_user() -> None:
    """A process of a throwaway user connects; the daemon side reads that user's uid."""
    server, port = _listen()
    with throwaway_user() as user, server:
        # bash's /dev/tcp: the venv's python may not be readable by other users.
        child = subprocess.Popen(
            ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}; sleep 5"],
            user=user.pw_uid,
            group=user.pw_gid,
        )
        try:
            conn, (host, peer_port) = server.accept()
            with conn:
                assert loopback_peer_uid(f"ipv4:{host}:{peer_port}", [port]) == user.pw_uid
        finally:
            child.kill()
            child.wait()


def test_a_non_loopback_peer_is_never_looked_up() -> None:
    assert loopback_peer_uid("ipv4:10.1.2.3:5000", [50051]) is None
