"""The agent's vouching socket: a user on this node needs no credential file.

A local program (schedctl, the client library) connects to this Unix socket; the
kernel says which uid is on the other end (SO_PEERCRED, which the peer cannot forge);
the agent answers with a credential for that user, signed with the key of its live
session with the daemon (schedulerd/auth/vouch.py), valid for a minute. Nothing is
read from the peer: there is nothing it could say that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from schedulerd.auth import vouch
from schedulerd.filetrust import untrusted_folder

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/schedulerd/auth.sock")
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return int(uid)


def answer(uid: int, node: str, key: bytes | None, now: float) -> bytes:
    """One line: `ok <credential>`, or `error <why>`."""
    if key is None:
        return b"error this node's agent is not connected to the daemon\n"
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"error uid {uid} has no user name on node {node}\n".encode()
    return f"ok {vouch.sign(key, node, user, uid, now)}\n".encode()


async def serve(
    path: Path, node: str, key: Callable[[], bytes | None], clock: Callable[[], float] = time.time
) -> None:
    """Serve until cancelled. A path held by a live agent is left alone (a warning):
    one machine, several agents (tests, or nodes sharing a host) share one socket."""
    # Only in a folder no one else may write: there, no other user can put their own
    # socket in its place, or a symlink for the chmod below to follow.
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as e:
        log.warning("cannot make %s (%s): not vouching for users here", path.parent, e)
        return
    unsafe = untrusted_folder(path.parent)
    if unsafe:
        log.warning("%s: %s; not vouching for users here", path, unsafe)
        return
    if not _claim(path):
        log.warning("%s is served by another agent: not vouching for users here", path)
        return

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            writer.write(answer(peer_uid(sock), node, key(), clock()))
            await asyncio.wait_for(writer.drain(), 5)
        except (OSError, TimeoutError) as e:
            log.debug("vouching socket: %s", e)
        finally:
            writer.close()

    try:
        server = await asyncio.start_unix_server(one, path=str(path))
        os.chmod(path, 0o666)  # any local user may ask who they are
    except OSError as e:
        log.warning("cannot serve %s (%s): not vouching for users here", path, e)
        return
    log.info("vouching for this node's users on %s", path)
    try:
        async with server:
            await server.serve_forever()
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def _claim(path: Path) -> bool:
    """True when the path is free (or a stale socket, removed); False when a live
    agent answers on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
            return False
        except OSError:
            pass
    path.unlink()
    return True
