"""The managed broker's private CA and server certificate: pure, no Kubernetes I/O.

Each TaskQueue with a managed broker and TLS on gets its own CA (EC P-256, 10 years) and
a server certificate signed by it (1 year) for the broker Service's DNS names. They live
in two Secrets (provision.py writes them):

  <tq>-broker-ca    ca.crt                          what clients trust (workers mount it)
  <tq>-broker-tls   tls.crt, tls.key, ca.crt, ca.key  the broker's own (it mounts only the
                                                    first three); ca.key signs renewals

`plan` decides, from what the Secrets hold now, whether anything must be (re)issued:
nothing while every certificate is valid for longer than its renewal margin, names still
match and the server certificate is signed by the CA. A renewed CA is trusted alongside
the old one (ca.crt holds both) until the old one expires, so clients that loaded the
old bundle still verify a server certificate from either.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=365)
# Re-issue the server certificate 30 days before it expires (the broker pod restarts to
# load it), and the CA a year before, so no server certificate outlives its CA.
SERVER_RENEW_BEFORE = dt.timedelta(days=30)
CA_RENEW_BEFORE = dt.timedelta(days=365)
BACKDATE = dt.timedelta(minutes=5)  # tolerate a little clock skew between nodes


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: str
    key_pem: str


@dataclass(frozen=True)
class Material:
    """Everything both Secrets hold."""

    ca: KeyPair
    ca_bundle: str  # what clients trust: the CA, plus a previous one still valid
    server: KeyPair


def dns_names(service: str, namespace: str) -> list[str]:
    """Every name a client in the cluster may use for the broker Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# What a CA key may do: sign certificates and CRLs (and its own OCSP/handshake
# signatures), nothing else. Shared with the e2e cluster's PKI (e2e/pki.py).
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def new_ca(common_name: str, now: dt.datetime) -> KeyPair:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            CA_KEY_USAGE,
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def new_server_cert(ca: KeyPair, names: Sequence[str], now: dt.datetime) -> KeyPair:
    """A server certificate for `names` (the first is the common name), signed by `ca`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + SERVER_LIFETIME, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def _load(pem: str | None) -> x509.Certificate | None:
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None


def _valid_for(cert: x509.Certificate, now: dt.datetime, margin: dt.timedelta) -> bool:
    return cert.not_valid_before_utc <= now and now + margin < cert.not_valid_after_utc


def _names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName))


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key_matches(pair: KeyPair, cert: x509.Certificate) -> bool:
    try:
        key = serialization.load_pem_private_key(pair.key_pem.encode(), password=None)
    except (ValueError, TypeError):
        return False
    return key.public_key() == cert.public_key()


def _bundle(new_ca_pem: str, old: x509.Certificate | None, now: dt.datetime) -> str:
    """The new CA, and the one it replaces while that is still valid."""
    if old is None or old.not_valid_after_utc <= now:
        return new_ca_pem
    old_pem = _cert_pem(old)
    return new_ca_pem if old_pem == new_ca_pem else new_ca_pem + old_pem


def plan(
    current_ca: KeyPair | None,
    current_bundle: str | None,
    current_server: KeyPair | None,
    names: Sequence[str],
    common_name: str,
    now: dt.datetime,
) -> Material | None:
    """None when what the Secrets hold is good (valid past its renewal margin, names and
    issuer right); otherwise the complete new content of both Secrets."""
    ca_cert = _load(current_ca.cert_pem) if current_ca else None
    keep_ca = (
        current_ca is not None
        and ca_cert is not None
        and _valid_for(ca_cert, now, CA_RENEW_BEFORE)
        and _key_matches(current_ca, ca_cert)
    )
    ca = current_ca if keep_ca else new_ca(common_name, now)
    assert ca is not None
    bundle = current_bundle if keep_ca and current_bundle else _bundle(ca.cert_pem, ca_cert, now)
    server_cert = _load(current_server.cert_pem) if current_server else None
    keep_server = (
        keep_ca
        and current_server is not None
        and server_cert is not None
        and _valid_for(server_cert, now, SERVER_RENEW_BEFORE)
        and _names(server_cert) == set(names)
        and _signed_by(server_cert, _load(ca.cert_pem))  # type: ignore[arg-type]
        and _key_matches(current_server, server_cert)
    )
    if keep_ca and keep_server and bundle == current_bundle:
        return None
    server = current_server if keep_server else new_server_cert(ca, names, now)
    assert server is not None
    return Material(ca=ca, ca_bundle=bundle, server=server)


def not_after(cert_pem: str) -> dt.datetime | None:
    """When a PEM certificate expires (None if it does not parse)."""
    cert = _load(cert_pem)
    return None if cert is None else cert.not_valid_after_utc
