"""Certificates and keys for the local control plane: one CA, the API server's serving
certificate, client certificates for the admin and the controller-manager, and the
service-account signing key pair. Generated fresh for each control plane, so nothing
secret is ever committed."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from ebbtide_operator.certs import CA_KEY_USAGE

# The in-cluster names a pod would use for the API server, so a kubeconfig built from a
# service-account token verifies too.
SERVING_DNS = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
SERVING_IPS = [
    "127.0.0.1",
    "10.96.0.1",
    "10.244.0.1",
]  # loopback, the `kubernetes` Service, the node's bridge
VALIDITY = dt.timedelta(days=30)


@dataclass(frozen=True)
class Pki:
    """Where each file lives; `create` writes them all."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.root / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.root / "apiserver.key"

    @property
    def sa_public(self) -> Path:
        return self.root / "sa.pub"

    @property
    def sa_private(self) -> Path:
        return self.root / "sa.key"

    def client(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.crt", self.root / f"{name}.key"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def create(root: Path, clients: dict[str, tuple[str, str | None]]) -> Pki:
    """Write a CA, the serving cert, one client cert per `clients` entry
    (file name -> (CN, O)) and the service-account key pair under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    pki = Pki(root)

    ca_key = _key()
    ca_name = _name("ebbtide-e2e-ca")
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            CA_KEY_USAGE,
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(ca_key, pki.ca_key)
    _write_cert(ca, pki.ca_cert)

    serving_key = _key()
    sans = [x509.DNSName(n) for n in SERVING_DNS] + [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVING_IPS
    ]
    serving = (
        _builder(_name("kube-apiserver"), ca_name, serving_key.public_key())
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(serving_key, pki.serving_key)
    _write_cert(serving, pki.serving_cert)

    for file_name, (common_name, organization) in clients.items():
        client_key = _key()
        cert = (
            _builder(_name(common_name, organization), ca_name, client_key.public_key())
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = pki.client(file_name)
        _write_key(client_key, key_path)
        _write_cert(cert, cert_path)

    sa_key = _key()
    _write_key(sa_key, pki.sa_private)
    pki.sa_public.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki
