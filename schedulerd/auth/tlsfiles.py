"""gRPC TLS credentials from the files of docs/certificates.md.

gRPC's Python server asks for a client certificate only when it requires one:
`ssl_server_credentials(..., require_client_auth=False)` never requests it, so a
listener that users reach with tokens can see no agent's certificate. Agents' mTLS
therefore needs a listener made with `require_client_cert=True`. There, gRPC puts
the verified peer's certificate in `context.auth_context()["x509_pem_cert"]`, and
`schedulerd.auth.ca.node_name_of` reads the node's name from it.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from schedulerd.auth.ca import CertError, read_file


def server_credentials(
    cert_path: Path,
    key_path: Path,
    client_ca_path: Path | None = None,
    *,
    require_client_cert: bool = False,
) -> grpc.ServerCredentials:
    """The daemon's TLS identity. With `require_client_cert`, every client must present
    a certificate issued by the CA in `client_ca_path` (the agents' listener); without,
    no client certificate is asked for and callers prove who they are otherwise."""
    if require_client_cert and client_ca_path is None:
        raise CertError("requiring client certificates needs the CA that issues them")
    return grpc.ssl_server_credentials(
        [(read_file(key_path), read_file(cert_path))],
        root_certificates=read_file(client_ca_path) if client_ca_path else None,
        require_client_auth=require_client_cert,
    )


def channel_credentials(
    ca_path: Path, cert_path: Path | None = None, key_path: Path | None = None
) -> grpc.ChannelCredentials:
    """A client's TLS: the daemon's certificate must be issued by the CA in `ca_path`;
    with `cert_path` and `key_path` (an agent's node certificate) the client proves
    its own identity too."""
    if (cert_path is None) != (key_path is None):
        raise CertError("a client certificate needs both its certificate and its key file")
    return grpc.ssl_channel_credentials(
        root_certificates=read_file(ca_path),
        private_key=read_file(key_path) if key_path else None,
        certificate_chain=read_file(cert_path) if cert_path else None,
    )
