"""build/tls.py: the TLS Secrets, the cert-manager Certificate, and URLs that follow TLS."""

from __future__ import annotations

import datetime as dt

from ebbtide_operator import certs, naming
from ebbtide_operator.build import tls
from ebbtide_operator.spec import IssuerRef
from support.taskqueue import assert_owned, decoded, managed_spec, taskqueue

OWNER = taskqueue(managed_spec("redis"))


def material() -> certs.Material:
    names = tls.server_names(OWNER, "redis")
    made = certs.plan(None, None, None, names, tls.common_name(OWNER), dt.datetime.now(dt.UTC))
    assert made is not None
    return made


def test_the_ca_secret_holds_the_bundle_only():
    made = material()
    secret = tls.ca_secret(OWNER, made)
    assert_owned(secret)
    assert secret["metadata"]["name"] == "tq1-broker-ca"
    assert decoded(secret) == {"ca.crt": made.ca_bundle}


def test_the_tls_secret_is_kubernetes_io_tls_with_the_ca_key_for_renewals():
    made = material()
    secret = tls.tls_secret(OWNER, made)
    assert_owned(secret)
    assert secret["type"] == "kubernetes.io/tls" and secret["metadata"]["name"] == "tq1-broker-tls"
    assert decoded(secret) == {
        "tls.crt": made.server.cert_pem,
        "tls.key": made.server.key_pem,
        "ca.crt": made.ca_bundle,
        "ca.key": made.ca.key_pem,
    }


def test_current_material_reads_back_what_the_secrets_hold():
    made = material()
    ca, bundle, server = tls.current_material(
        tls.ca_secret(OWNER, made), tls.tls_secret(OWNER, made)
    )
    assert ca == made.ca and bundle == made.ca_bundle and server == made.server
    assert tls.current_material(None, None) == (None, None, None)


def test_the_tls_hash_follows_the_certificate():
    one, two = tls.tls_secret(OWNER, material()), tls.tls_secret(OWNER, material())
    assert tls.tls_hash(one) and tls.tls_hash(one) == tls.tls_hash(dict(one))
    assert tls.tls_hash(one) != tls.tls_hash(two)
    assert tls.tls_hash(None) == ""


def test_the_cert_manager_certificate():
    issuer = IssuerRef(name="corp-ca", kind="ClusterIssuer")
    cert = tls.certificate(OWNER, "rabbitmq", issuer)
    assert_owned(cert)
    assert cert["apiVersion"] == "cert-manager.io/v1" and cert["kind"] == "Certificate"
    spec = cert["spec"]
    assert spec["secretName"] == cert["metadata"]["name"] == "tq1-broker-tls"
    assert spec["dnsNames"] == certs.dns_names("tq1-rabbitmq", "ns1")
    assert spec["commonName"] == "tq1-rabbitmq"
    assert spec["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert spec["duration"] == "8760h" and spec["renewBefore"] == "720h"
    assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
    assert spec["usages"] == ["server auth", "digital signature", "key encipherment"]
    assert spec["secretTemplate"]["labels"][naming.TASKQUEUE_LABEL] == "tq1"
