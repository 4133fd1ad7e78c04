"""Where the daemon listens, and how: TLS on anything that is not loopback or a Unix
socket (refused without TLS unless --insecure), mTLS on the agents' listener, and
message size limits on every call (docs/security.md)."""

from __future__ import annotations

import logging
import os
import pwd
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from schedulerd.auth.ca import CertError
from schedulerd.auth.tlsfiles import server_credentials
from schedulerd.client import is_local_address

if TYPE_CHECKING:
    from schedulerd.daemon.server import DaemonConfig

log = logging.getLogger("schedulerd")

# The largest request the daemon reads: a job's spec is bounded far below this (64 KiB
# of argv, 64 KiB of env), a batch of 1,000 of them is not: it fits here or is refused.
MAX_RECEIVE_BYTES = 16 * 1024 * 1024
# The largest answer: a page of jobs is cut to fit (services/scheduler.py).
MAX_SEND_BYTES = 32 * 1024 * 1024


def server_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        # A peer that opens streams without end must not hold the daemon's memory.
        ("grpc.max_concurrent_streams", 1000),
    ]


def add_listeners(server: grpc.aio.Server, config: DaemonConfig) -> tuple[int, int]:
    """Bind the users' listener and, if asked, the agents'; (port, agent_port)."""
    tls = _tls_pair(config)
    port = _bind(server, config.listen, config, tls, mtls=False)
    for address in config.also_listen:
        _bind(server, address, config, tls, mtls=False)
    agent_port = 0
    if config.agent_listen:
        agent_port = _bind(server, config.agent_listen, config, tls, mtls=True)
    return port, agent_port


def _bind(
    server: grpc.aio.Server,
    address: str,
    config: DaemonConfig,
    tls: tuple[Path, Path] | None,
    mtls: bool,
) -> int:
    # Loopback and Unix sockets need no TLS (nothing crosses a network, and the loopback
    # uid is how local users are known) unless asked; the agents' mTLS listener always has it.
    plain_here = is_local_address(address) and not mtls and not config.tls_loopback
    if tls is None or plain_here:
        if not is_local_address(address):
            if not config.insecure:
                raise SystemExit(
                    f"refusing to listen on {address} without TLS: anyone who reaches it "
                    "could pose as a node or sniff tokens. Give --tls-cert and --tls-key "
                    "(docs/certificates.md), or --insecure on a network you trust"
                )
            log.warning(
                "listening on %s WITHOUT TLS (--insecure): tokens and jobs' secrets cross "
                "the network in clear text",
                address,
            )
        port: int = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, _credentials(config, tls, mtls))
    if port == 0:
        raise SystemExit(f"cannot listen on {address}")
    return port


def open_unix_sockets(config: DaemonConfig) -> None:
    """Let every local user connect to the Unix-socket listeners (after the server
    started: gRPC creates them with the umask's mode). Who they are is then their
    token's or their node agent's word, never the socket's."""
    for address in (config.listen, *config.also_listen):
        if address.startswith("unix:") and not address.startswith("unix:@"):
            os.chmod(address.removeprefix("unix:").removeprefix("//"), 0o666)


def _tls_pair(config: DaemonConfig) -> tuple[Path, Path] | None:
    if config.tls_cert is None and config.tls_key is None:
        if config.agent_listen and not config.insecure:
            raise SystemExit("--agent-listen needs --tls-cert, --tls-key and --tls-client-ca")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise SystemExit("TLS needs both --tls-cert and --tls-key")
    return config.tls_cert, config.tls_key


def _credentials(
    config: DaemonConfig, tls: tuple[Path, Path], mtls: bool
) -> grpc.ServerCredentials:
    cert, key = tls
    if mtls and config.tls_client_ca is None:
        raise SystemExit("--agent-listen needs --tls-client-ca: the CA of the nodes' certificates")
    try:
        # Users prove who they are with tokens, so their listener asks for no client
        # certificate (gRPC's Python API cannot ask for an optional one).
        return server_credentials(cert, key, config.tls_client_ca, require_client_cert=mtls)
    except CertError as e:
        raise SystemExit(f"TLS: {e}") from None


def cluster_admins(extra: Iterable[str]) -> frozenset[str]:
    """The daemon's own user (whoever started it administers it: the single-machine
    default needs no setup), and the names given with --admin."""
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = f"uid-{os.geteuid()}"
    return frozenset({me, *extra})
