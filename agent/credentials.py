"""How this agent proves to the daemon which node it is (docs/security.md):

- a node certificate of the cluster CA (mTLS, on the daemon's --agent-listen), or
- a node token (`schedctl token create --node NAME`), in a file only root may read,
  sent as `authorization: Bearer`, over TLS when a CA is given; or
- nothing, on the daemon's own machine over loopback: the daemon reads the agent's
  uid from the kernel, and lets a cluster admin's process (root, or the daemon's own
  user) connect as any node. That is the one-machine setup (`schedulerd --local-agent`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from schedulerd.auth.tlsfiles import channel_credentials
from schedulerd.client import CredentialError, read_token_file


@dataclass(frozen=True)
class DaemonCredentials:
    tls: grpc.ChannelCredentials | None = None
    token: str | None = None

    def channel(self, target: str, options: list[tuple[str, int]]) -> grpc.aio.Channel:
        if self.tls is not None:
            return grpc.aio.secure_channel(target, self.tls, options=options)
        return grpc.aio.insecure_channel(target, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def load(
    ca: Path | None, cert: Path | None, key: Path | None, token_file: Path | None
) -> DaemonCredentials:
    """From the agent's options; SystemExit with the reason when a file is unusable."""
    if (cert or key) and ca is None:
        raise SystemExit("--tls-cert/--tls-key need --tls-ca (the cluster CA)")
    try:
        tls = channel_credentials(ca, cert, key) if ca is not None else None
    except Exception as e:  # CertError, or an unreadable file
        raise SystemExit(f"TLS files: {e}") from None
    token = _read_token(token_file) if token_file is not None else None
    return DaemonCredentials(tls, token)


def _read_token(path: Path) -> str:
    try:
        return read_token_file(path)
    except CredentialError as e:
        raise SystemExit(str(e)) from None
