"""The cluster CA (schedulerd.auth.ca) and the TLS credentials made from its files
(schedulerd.auth.tlsfiles), proven with real TLS handshakes against a gRPC server."""

from __future__ import annotations

import datetime as dt
import stat
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from schedulerd.auth.ca import (
    CA,
    CertError,
    init_ca,
    issue_node,
    issue_server,
    load_ca,
    node_name_of,
    verify_issued_by,
)
from schedulerd.auth.tlsfiles import channel_credentials, server_credentials


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _pem(ca: CA) -> bytes:
    return ca.cert.public_bytes(Encoding.PEM)


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return init_ca(tmp_path / "ca")


def test_a_new_ca_is_a_self_signed_ca_with_a_secret_key(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    crt, key = tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key"
    assert _mode(key) == 0o600
    cert = _cert(crt)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert cert.subject.rfc4514_string().startswith("CN=schedulerd cluster CA ")
    verify_issued_by(crt.read_bytes(), crt.read_bytes())
    assert load_ca(tmp_path / "ca").cert == cert


def test_an_existing_ca_is_never_replaced_unless_forced(tmp_path: Path) -> None:
    first = init_ca(tmp_path)
    with pytest.raises(CertError, match=r"ca\.crt exists.*--force"):
        init_ca(tmp_path)
    assert load_ca(tmp_path).cert == first.cert
    second = init_ca(tmp_path, force=True)
    assert second.cert != first.cert and load_ca(tmp_path).cert == second.cert
    assert _mode(tmp_path / "ca.key") == 0o600


def test_a_missing_or_mismatched_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CertError, match=f"cannot read {tmp_path / 'ca.crt'}"):
        load_ca(tmp_path)
    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(CertError, match=r"ca\.key is not the key of .*ca\.crt"):
        load_ca(tmp_path / "a")


def test_a_node_certificate_names_its_node(ca: CA, tmp_path: Path) -> None:
    issued = issue_node(ca, "gpu-07.lab", tmp_path / "out")
    assert issued.cert_path == tmp_path / "out" / "gpu-07.lab.crt"
    assert _mode(issued.key_path) == 0o600
    pem = issued.cert_path.read_bytes()
    assert node_name_of(pem) == "gpu-07.lab"
    cert = _cert(issued.cert_path)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["gpu-07.lab"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    verify_issued_by(pem, _pem(ca))


def test_reissuing_a_node_certificate_replaces_it(ca: CA, tmp_path: Path) -> None:
    first = issue_node(ca, "n1", tmp_path).cert_path.read_bytes()
    again = issue_node(ca, "n1", tmp_path)
    assert again.cert_path.read_bytes() != first
    assert _mode(again.key_path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca", "n1.crt", "n1.key"]


@pytest.mark.parametrize("name", ["", "-n1", ".n1", "a/b", "../x", "a b", "n" * 64, "nœud"])
def test_a_node_name_that_is_not_a_plain_name_is_refused(ca: CA, tmp_path: Path, name: str) -> None:
    with pytest.raises(CertError, match="node name"):
        issue_node(ca, name, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_server_certificate_holds_host_names_and_addresses(ca: CA, tmp_path: Path) -> None:
    issued = issue_server(ca, ["localhost", "127.0.0.1", "::1", "sched.lab"], tmp_path)
    assert (issued.cert_path.name, _mode(issued.key_path)) == ("server.crt", 0o600)
    cert = _cert(issued.cert_path)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "sched.lab"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert node_name_of(issued.cert_path.read_bytes()) is None  # a server is no node
    with pytest.raises(CertError, match="at least one host"):
        issue_server(ca, [], tmp_path)


def test_a_certificate_of_another_ca_or_out_of_its_dates_is_refused(ca: CA, tmp_path: Path) -> None:
    other = init_ca(tmp_path / "other")
    ca_pem = _pem(ca)
    stranger = issue_node(other, "n1", tmp_path / "o").cert_path.read_bytes()
    with pytest.raises(CertError, match="CN=n1 was not issued by CN=schedulerd cluster CA"):
        verify_issued_by(stranger, ca_pem)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = issue_node(ca, "n1", tmp_path / "x", days=1, not_before=past)
    with pytest.raises(CertError, match="CN=n1 expired on"):
        verify_issued_by(expired.cert_path.read_bytes(), ca_pem)
    fresh = issue_node(ca, "n1", tmp_path / "y").cert_path.read_bytes()
    with pytest.raises(CertError, match="not valid before"):
        verify_issued_by(fresh, ca_pem, now=past)


def test_what_is_not_a_certificate_is_said_so() -> None:
    with pytest.raises(CertError, match="peer certificate: not a PEM certificate"):
        node_name_of(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


# -- real handshakes -----------------------------------------------------------------


class _Recorder(health.HealthServicer):  # type: ignore[misc]
    """The health service, noting the node each caller proved to be."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[str | None] = []

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        pems = context.auth_context().get("x509_pem_cert")  # as the daemon's gate reads it
        self.nodes.append(node_name_of(pems[0]) if pems else None)
        return super().Check(request, context)


@dataclass
class Daemon:
    """A TLS server as the daemon runs one: a listener for users (no client
    certificate asked) and one for agents (a certificate of the cluster CA required)."""

    pki: Path
    users_port: int
    agents_port: int
    seen: _Recorder


@pytest.fixture
def daemon(ca: CA, tmp_path: Path) -> Iterator[Daemon]:
    pki = tmp_path / "ca"
    issue_server(ca, ["localhost", "127.0.0.1"], pki)
    seen = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(seen, server)
    cert, key, ca_crt = pki / "server.crt", pki / "server.key", pki / "ca.crt"
    users = server.add_secure_port("127.0.0.1:0", server_credentials(cert, key))
    agents = server.add_secure_port(
        "127.0.0.1:0", server_credentials(cert, key, ca_crt, require_client_cert=True)
    )
    server.start()
    yield Daemon(pki, users, agents, seen)
    server.stop(grace=None)


def _check(
    port: int,
    creds: grpc.ChannelCredentials,
    host: str = "127.0.0.1",
    options: list[tuple[str, str]] | None = None,
) -> grpc.StatusCode:
    with grpc.secure_channel(f"{host}:{port}", creds, options=options) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def test_a_client_that_trusts_the_ca_reaches_the_daemon_by_name_or_address(
    daemon: Daemon,
) -> None:
    creds = channel_credentials(daemon.pki / "ca.crt")
    assert _check(daemon.users_port, creds) == grpc.StatusCode.OK
    assert _check(daemon.users_port, creds, host="localhost") == grpc.StatusCode.OK
    assert daemon.seen.nodes == [None, None]


def test_a_daemon_named_otherwise_than_its_certificate_is_refused(daemon: Daemon) -> None:
    creds = channel_credentials(daemon.pki / "ca.crt")
    renamed = [("grpc.ssl_target_name_override", "elsewhere.example")]
    assert _check(daemon.users_port, creds, options=renamed) == grpc.StatusCode.UNAVAILABLE
    assert daemon.seen.nodes == []


def test_a_client_without_the_cluster_ca_cannot_trust_the_daemon(
    daemon: Daemon, tmp_path: Path
) -> None:
    init_ca(tmp_path / "other")
    creds = channel_credentials(tmp_path / "other" / "ca.crt")
    assert _check(daemon.users_port, creds) == grpc.StatusCode.UNAVAILABLE
    assert daemon.seen.nodes == []


def test_an_agent_is_seen_as_the_node_its_certificate_names(daemon: Daemon, ca: CA) -> None:
    node = issue_node(ca, "n1", daemon.pki / "nodes")
    creds = channel_credentials(daemon.pki / "ca.crt", node.cert_path, node.key_path)
    assert _check(daemon.agents_port, creds) == grpc.StatusCode.OK
    assert daemon.seen.nodes == ["n1"]


def test_the_users_listener_never_asks_for_a_client_certificate(daemon: Daemon, ca: CA) -> None:
    """Why agents need a listener of their own: gRPC's Python server, not requiring a
    client certificate, does not request one, so the node's certificate never arrives."""
    node = issue_node(ca, "n1", daemon.pki / "nodes")
    creds = channel_credentials(daemon.pki / "ca.crt", node.cert_path, node.key_path)
    assert _check(daemon.users_port, creds) == grpc.StatusCode.OK
    assert daemon.seen.nodes == [None]


def test_the_agents_listener_refuses_a_client_without_a_good_certificate(
    daemon: Daemon, ca: CA, tmp_path: Path
) -> None:
    ca_crt = daemon.pki / "ca.crt"
    assert _check(daemon.agents_port, channel_credentials(ca_crt)) == grpc.StatusCode.UNAVAILABLE

    other = init_ca(tmp_path / "other")
    stranger = issue_node(other, "n1", tmp_path / "other")
    creds = channel_credentials(ca_crt, stranger.cert_path, stranger.key_path)
    assert _check(daemon.agents_port, creds) == grpc.StatusCode.UNAVAILABLE

    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = issue_node(ca, "n1", tmp_path / "expired", days=1, not_before=past)
    creds = channel_credentials(ca_crt, expired.cert_path, expired.key_path)
    assert _check(daemon.agents_port, creds) == grpc.StatusCode.UNAVAILABLE
    assert daemon.seen.nodes == []


def test_credentials_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(CertError, match=f"cannot read {tmp_path / 'ca.crt'}"):
        channel_credentials(tmp_path / "ca.crt")
    with pytest.raises(CertError, match="both its certificate and its key"):
        channel_credentials(tmp_path / "ca.crt", cert_path=tmp_path / "n1.crt")
    with pytest.raises(CertError, match="needs the CA"):
        server_credentials(tmp_path / "s.crt", tmp_path / "s.key", require_client_cert=True)
    with pytest.raises(CertError, match=f"cannot read {tmp_path / 's.key'}"):
        server_credentials(tmp_path / "s.crt", tmp_path / "s.key")


def test_during_a_ca_rotation_a_bundle_of_both_cas_trusts_either(ca: CA, tmp_path: Path) -> None:
    """docs/certificates.md: the old and the new CA in one file, for the daemon's client
    CA and for clients, while certificates are reissued."""
    new = init_ca(tmp_path / "new")
    bundle = tmp_path / "both.crt"
    bundle.write_bytes((tmp_path / "ca" / "ca.crt").read_bytes() + _pem(new))
    server = issue_server(new, ["127.0.0.1"], tmp_path / "s")
    seen = _Recorder()
    daemon = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(seen, daemon)
    creds = server_credentials(server.cert_path, server.key_path, bundle, require_client_cert=True)
    port = daemon.add_secure_port("127.0.0.1:0", creds)
    daemon.start()
    try:
        old_node = issue_node(ca, "old", tmp_path / "n")
        new_node = issue_node(new, "new", tmp_path / "n")
        for node in (old_node, new_node):
            client = channel_credentials(bundle, node.cert_path, node.key_path)
            assert _check(port, client) == grpc.StatusCode.OK
        only_old = channel_credentials(
            tmp_path / "ca" / "ca.crt", old_node.cert_path, old_node.key_path
        )
        assert _check(port, only_old) == grpc.StatusCode.UNAVAILABLE  # the new server cert
    finally:
        daemon.stop(grace=None)
    assert seen.nodes == ["old", "new"]
