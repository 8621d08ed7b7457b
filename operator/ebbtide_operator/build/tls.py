"""Pure builders for a managed broker's TLS: the CA and server Secrets, the cert-manager
Certificate.

Generated (the default): `<tq>-broker-ca` (ca.crt, for clients) and `<tq>-broker-tls`
(tls.crt, tls.key, ca.crt for the broker; ca.key to sign renewals), content from
certs.plan. With `spec.broker.tls.issuerRef`: a cert-manager Certificate whose
secretName is `<tq>-broker-tls` (cert-manager writes tls.crt, tls.key and ca.crt), and no
`<tq>-broker-ca`: clients read ca.crt from `<tq>-broker-tls`. No I/O here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from ebbtide_operator import certs, naming
from ebbtide_operator.build.common import Body, owned, spec_hash
from ebbtide_operator.spec import IssuerRef

CERT_MANAGER_VERSION = "v1"


def server_names(owner: Body, broker_type: str) -> list[str]:
    """The DNS names of the broker Service, which its certificate must carry."""
    meta = owner["metadata"]
    return certs.dns_names(naming.broker_name(meta["name"], broker_type), meta["namespace"])


def common_name(owner: Body) -> str:
    meta = owner["metadata"]
    return f"ebbtide {meta['namespace']}/{meta['name']} broker CA"


def _secret(owner: Body, name: str, secret_type: str, data: Mapping[str, str]) -> dict[str, Any]:
    taskqueue = owner["metadata"]["name"]
    return owned(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": secret_type,
            "metadata": {"name": name, "labels": naming.common_labels(taskqueue, "broker")},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        },
        owner,
    )


def ca_secret(owner: Body, material: certs.Material) -> dict[str, Any]:
    """`<tq>-broker-ca`: the CA bundle clients trust, nothing secret."""
    name = naming.broker_ca_secret_name(owner["metadata"]["name"])
    return _secret(owner, name, "Opaque", {naming.CA_CERT_KEY: material.ca_bundle})


def tls_secret(owner: Body, material: certs.Material) -> dict[str, Any]:
    """`<tq>-broker-tls`: the broker's certificate and key, and the CA's key."""
    name = naming.broker_tls_secret_name(owner["metadata"]["name"])
    data = {
        naming.TLS_CERT_KEY: material.server.cert_pem,
        naming.TLS_KEY_KEY: material.server.key_pem,
        naming.CA_CERT_KEY: material.ca_bundle,
        naming.CA_KEY_KEY: material.ca.key_pem,
    }
    return _secret(owner, name, "kubernetes.io/tls", data)


def _decoded(secret: Mapping[str, Any] | None, key: str) -> str | None:
    value = ((secret or {}).get("data") or {}).get(key)
    if not value:
        return None
    try:
        return base64.b64decode(value).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def current_material(
    ca: Mapping[str, Any] | None, tls: Mapping[str, Any] | None
) -> tuple[certs.KeyPair | None, str | None, certs.KeyPair | None]:
    """(CA, CA bundle, server pair) as the two live Secrets hold them (None: missing)."""
    ca_key = _decoded(tls, naming.CA_KEY_KEY)
    bundle = _decoded(ca, naming.CA_CERT_KEY)
    ca_pem = _decoded(tls, naming.CA_CERT_KEY)
    ca_pair = None
    if ca_key and ca_pem:
        # The first certificate of the bundle is the current CA.
        first = ca_pem.split("-----END CERTIFICATE-----", 1)[0] + "-----END CERTIFICATE-----\n"
        ca_pair = certs.KeyPair(first, ca_key)
    cert, key = _decoded(tls, naming.TLS_CERT_KEY), _decoded(tls, naming.TLS_KEY_KEY)
    server = certs.KeyPair(cert, key) if cert and key else None
    return ca_pair, bundle, server


def tls_hash(tls: Mapping[str, Any] | None) -> str:
    """A hash of the broker's live certificate, as its pod's annotation: a new one
    (renewed by us or by cert-manager) restarts the broker, which loads it at start."""
    cert = _decoded(tls, naming.TLS_CERT_KEY)
    return spec_hash({"cert": cert}) if cert else ""


def certificate(owner: Body, broker_type: str, issuer: IssuerRef) -> dict[str, Any]:
    """A cert-manager Certificate for the broker Service's names, into `<tq>-broker-tls`.
    Same lifetimes as the generated one; cert-manager renews it before it expires."""
    taskqueue = owner["metadata"]["name"]
    secret = naming.broker_tls_secret_name(taskqueue)
    names = server_names(owner, broker_type)
    hours = int(certs.SERVER_LIFETIME.total_seconds() // 3600)
    renew = int(certs.SERVER_RENEW_BEFORE.total_seconds() // 3600)
    return owned(
        {
            "apiVersion": f"{naming.CERT_MANAGER_GROUP}/{CERT_MANAGER_VERSION}",
            "kind": "Certificate",
            "metadata": {"name": secret, "labels": naming.common_labels(taskqueue, "broker")},
            "spec": {
                "secretName": secret,
                "secretTemplate": {"labels": naming.common_labels(taskqueue, "broker")},
                "commonName": names[0],
                "dnsNames": names,
                "duration": f"{hours}h",
                "renewBefore": f"{renew}h",
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "usages": ["server auth", "digital signature", "key encipherment"],
                "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
            },
        },
        owner,
    )
