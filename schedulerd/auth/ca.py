"""The cluster's certificate authority (docs/certificates.md): the CA itself, node
certificates (an agent's identity is its node name) and the daemon's server certificate.

Keys are ECDSA P-256 and written unencrypted with mode 0600: the daemon and the agents
read them unattended at start, so the file's permissions are what keeps them secret.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from schedulerd.auth.certerror import CertError

__all__ = ["CertError"]  # re-exported: its home was here

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
NODE_URI_PREFIX = "schedulerd:node:"
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
SERVER_NAME = "schedulerd"
# Certificates start a few minutes in the past: a machine whose clock is a little
# behind the issuer's must not refuse a certificate issued a second ago.
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issued:
    """Where an issued certificate and its key were written, and when it expires."""

    cert_path: Path
    key_path: Path
    not_after: dt.datetime


def check_node_name(name: str) -> str:
    if not NODE_NAME.fullmatch(name):
        raise CertError(
            f"node name {name!r}: 1 to 63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def read_file(path: Path) -> bytes:
    """A file's bytes; the error names the file."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise CertError(f"cannot read {path}: {e.strerror}") from None


def init_ca(directory: Path, *, force: bool = False, days: int = 3650) -> CA:
    """A new CA in `directory` (ca.crt, ca.key). An existing CA is replaced only with
    `force`: every certificate it issued then stops being accepted."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not force:
        for path in (cert_path, key_path):
            if path.exists():
                raise CertError(
                    f"{path} exists: a CA is already there (replacing it invalidates "
                    "every certificate it issued; use --force to do it anyway)"
                )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"schedulerd cluster CA {secrets.token_hex(4)}")]
    )
    start = _now() - CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write(key_path, _key_pem(key), 0o600, replace=force)
    _write(cert_path, _cert_pem(cert), 0o644, replace=force)
    return CA(cert, key)


def load_ca(directory: Path) -> CA:
    """The CA in `directory`; its key must belong to its certificate."""
    cert = _load_cert(read_file(directory / CA_CERT), directory / CA_CERT)
    key_pem = read_file(directory / CA_KEY)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertError(f"{directory / CA_KEY}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertError(f"{directory / CA_KEY} is not the key of {directory / CA_CERT}")
    return CA(cert, key)


def issue_node(
    ca: CA,
    node: str,
    out_dir: Path,
    *,
    days: int = 365,
    not_before: dt.datetime | None = None,
) -> Issued:
    """<out_dir>/<node>.crt and .key: the certificate an agent presents as node `node`.
    Reissuing replaces the files (renewal); the old certificate stays valid until it
    expires. `not_before` (default: now) lets tests make an expired certificate."""
    check_node_name(node)
    sans: list[x509.GeneralName] = [
        x509.DNSName(node),
        x509.UniformResourceIdentifier(NODE_URI_PREFIX + node),
    ]
    # serverAuth too: harmless, and it lets a node certificate serve TLS if ever needed.
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    return _issue(ca, node, sans, usages, out_dir / node, days, not_before)


def issue_server(
    ca: CA,
    hosts: Sequence[str],
    out_dir: Path,
    *,
    days: int = 365,
    not_before: dt.datetime | None = None,
) -> Issued:
    """<out_dir>/server.crt and .key for the daemon: valid for each of `hosts`, host
    names or IP addresses, exactly as clients write them in the daemon's address."""
    if not hosts:
        raise CertError("a server certificate needs at least one host name or IP address")
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    return _issue(ca, SERVER_NAME, sans, usages, out_dir / "server", days, not_before)


def node_name_of(cert_pem: bytes) -> str | None:
    """The node a certificate names (its one `schedulerd:node:NAME` URI), or None.
    The daemon reads it from a verified peer (auth_context()['x509_pem_cert'])."""
    cert = _load_cert(cert_pem, "peer certificate")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    names = [u.removeprefix(NODE_URI_PREFIX) for u in uris if u.startswith(NODE_URI_PREFIX)]
    if len(names) != 1 or not NODE_NAME.fullmatch(names[0]):
        return None
    return names[0]


def verify_issued_by(cert_pem: bytes, ca_pem: bytes, now: dt.datetime | None = None) -> None:
    """Raise CertError unless the certificate was signed by this CA and is valid now."""
    cert = _load_cert(cert_pem, "certificate")
    ca = _load_cert(ca_pem, "CA certificate")
    subject = cert.subject.rfc4514_string()
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError(f"{subject} was not issued by {ca.subject.rfc4514_string()}") from None
    when = now or _now()
    if when < cert.not_valid_before_utc:
        raise CertError(
            f"{subject} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if when > cert.not_valid_after_utc:
        raise CertError(f"{subject} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def _issue(
    ca: CA,
    common_name: str,
    sans: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    stem: Path,
    days: int,
    not_before: dt.datetime | None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    stem.parent.mkdir(parents=True, exist_ok=True)
    issued = Issued(
        stem.with_name(stem.name + ".crt"),
        stem.with_name(stem.name + ".key"),
        cert.not_valid_after_utc,
    )
    _write(issued.key_path, _key_pem(key), 0o600, replace=True)
    _write(issued.cert_path, _cert_pem(cert), 0o644, replace=True)
    return issued


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write a file created with `mode` from its first byte (a key is never readable by
    others, not even for a moment). Without `replace`, O_EXCL: an existing file is an
    error, never overwritten. With it, a temporary file renamed over the old one, so a
    reader sees the old file or the new one, never half of one."""
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp") if replace else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CertError(f"{path} exists; not overwritten") from None
    except OSError as e:
        raise CertError(f"cannot create {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(target, path)
    except OSError as e:
        target.unlink(missing_ok=True)  # no half-written key left behind to block a retry
        raise CertError(f"cannot write {path}: {e.strerror}") from None


def _load_cert(pem: bytes, where: object) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise CertError(f"{where}: not a PEM certificate ({e})") from None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
