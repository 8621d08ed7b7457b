"""certs.py: the generated CA and server certificate, and when they are (re)issued."""

from __future__ import annotations

import datetime as dt
import ssl

from cryptography import x509
from ebbtide_operator import certs

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
NAMES = certs.dns_names("tq-redis", "ns")


def issue(now: dt.datetime = NOW) -> certs.Material:
    material = certs.plan(None, None, None, NAMES, "ebbtide ns/tq broker CA", now)
    assert material is not None
    return material


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_dns_names_cover_every_way_to_name_the_service():
    assert NAMES == [
        "tq-redis",
        "tq-redis.ns",
        "tq-redis.ns.svc",
        "tq-redis.ns.svc.cluster.local",
    ]


def test_a_fresh_ca_and_server_certificate_with_sane_lifetimes():
    material = issue()
    ca, server = load(material.ca.cert_pem), load(material.server.cert_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.not_valid_after_utc - NOW == certs.CA_LIFETIME
    assert server.not_valid_after_utc - NOW == certs.SERVER_LIFETIME
    assert server.not_valid_before_utc < NOW  # backdated for clock skew
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == NAMES
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    server.verify_directly_issued_by(ca)
    assert material.ca_bundle == material.ca.cert_pem


def test_pythons_ssl_accepts_the_pair(tmp_path):
    """What the brokers load and what clients verify: the key matches, the chain holds."""
    material = issue(dt.datetime.now(dt.UTC))
    (tmp_path / "tls.crt").write_text(material.server.cert_pem)
    (tmp_path / "tls.key").write_text(material.server.key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.create_default_context(cadata=material.ca_bundle)
    assert client.get_ca_certs()[0]["subject"] == ((("commonName", "ebbtide ns/tq broker CA"),),)


def test_nothing_is_reissued_while_valid():
    material = issue()
    for later in (NOW, NOW + dt.timedelta(days=300)):
        assert (
            certs.plan(material.ca, material.ca_bundle, material.server, NAMES, "x", later) is None
        )


def test_the_server_certificate_renews_inside_its_margin_and_keeps_the_ca():
    material = issue()
    due = NOW + certs.SERVER_LIFETIME - certs.SERVER_RENEW_BEFORE + dt.timedelta(hours=1)
    renewed = certs.plan(material.ca, material.ca_bundle, material.server, NAMES, "x", due)
    assert renewed is not None
    assert renewed.ca == material.ca and renewed.ca_bundle == material.ca_bundle
    assert renewed.server != material.server
    assert load(renewed.server.cert_pem).not_valid_after_utc > due + dt.timedelta(days=300)


def test_new_names_or_a_foreign_server_certificate_reissue_it():
    material = issue()
    other_names = certs.dns_names("tq-rabbitmq", "ns")
    moved = certs.plan(material.ca, material.ca_bundle, material.server, other_names, "x", NOW)
    assert moved is not None and moved.ca == material.ca
    san = load(moved.server.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == other_names
    stranger = issue()  # signed by another CA
    fixed = certs.plan(material.ca, material.ca_bundle, stranger.server, NAMES, "x", NOW)
    assert fixed is not None and fixed.server != stranger.server
    load(fixed.server.cert_pem).verify_directly_issued_by(load(material.ca.cert_pem))


def test_a_key_that_does_not_match_its_certificate_is_replaced():
    material = issue()
    other = issue()
    mixed = certs.KeyPair(material.server.cert_pem, other.server.key_pem)
    assert certs.plan(material.ca, material.ca_bundle, mixed, NAMES, "x", NOW) is not None


def test_an_expiring_ca_is_renewed_and_trusted_next_to_the_old_one():
    material = issue()
    due = NOW + certs.CA_LIFETIME - certs.CA_RENEW_BEFORE + dt.timedelta(days=1)
    renewed = certs.plan(material.ca, material.ca_bundle, material.server, NAMES, "x", due)
    assert renewed is not None and renewed.ca != material.ca
    assert renewed.ca_bundle == renewed.ca.cert_pem + material.ca.cert_pem
    load(renewed.server.cert_pem).verify_directly_issued_by(load(renewed.ca.cert_pem))


def test_garbage_in_the_secrets_is_replaced_not_a_crash():
    junk = certs.KeyPair("not a certificate", "not a key")
    assert certs.plan(junk, "junk", junk, NAMES, "x", NOW) is not None
    assert certs.not_after("junk") is None
