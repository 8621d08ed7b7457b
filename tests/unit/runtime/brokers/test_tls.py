"""brokers/tls.py: the one runtime setting for TLS (the CA file and a client certificate),
and the RabbitMQ management URL following the AMQP scheme."""

from __future__ import annotations

import ssl

import pytest
from ebbtide.brokers.rabbitmq.topology import parse_options
from ebbtide.brokers.tls import BrokerTLS, BrokerTLSError, explain, is_tls_url


def test_from_env_reads_the_three_files():
    env = {
        "EBBTIDE_BROKER_CA_FILE": "/ca.crt",
        "EBBTIDE_BROKER_CERT_FILE": "/tls.crt",
        "EBBTIDE_BROKER_KEY_FILE": "/tls.key",
    }
    assert BrokerTLS.from_env(env) == BrokerTLS("/ca.crt", "/tls.crt", "/tls.key")
    assert BrokerTLS.from_env({}) == BrokerTLS()
    with pytest.raises(BrokerTLSError, match="EBBTIDE_BROKER_KEY_FILE is set but"):
        BrokerTLS.from_env({"EBBTIDE_BROKER_KEY_FILE": "/k"})


def test_without_a_ca_the_system_cas_verify_host_and_certificate():
    context = BrokerTLS().context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert BrokerTLS().redis_kwargs() == {"ssl_cert_reqs": "required", "ssl_check_hostname": True}


def test_a_missing_or_bad_file_is_named(tmp_path):
    with pytest.raises(BrokerTLSError, match=r"EBBTIDE_BROKER_CERT_FILE=/nope: no such file"):
        BrokerTLS(cert_file="/nope").redis_kwargs()
    bad = tmp_path / "ca.crt"
    bad.write_text("not pem")
    with pytest.raises(BrokerTLSError, match=f"unusable broker TLS files \\(CA {bad}\\)"):
        BrokerTLS(ca_file=str(bad)).context()


def test_redis_kwargs_name_the_files(tmp_path):
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / name).write_text("x")
    tls = BrokerTLS(*(str(tmp_path / n) for n in ("ca.crt", "tls.crt", "tls.key")))
    assert tls.redis_kwargs() == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(tmp_path / "ca.crt"),
        "ssl_certfile": str(tmp_path / "tls.crt"),
        "ssl_keyfile": str(tmp_path / "tls.key"),
    }


def test_explain_names_the_ca_on_a_verification_failure():
    error = ssl.SSLCertVerificationError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate\nverify failed"
    )
    line = explain(error, BrokerTLS(ca_file="/etc/ca.crt"))
    assert line.startswith("TLS: the broker's certificate did not verify against CA /etc/ca.crt")
    assert "\n" not in line
    assert "system CAs" in explain(error, BrokerTLS())
    assert explain(ConnectionRefusedError("refused"), BrokerTLS()) == "refused"


def test_tls_urls():
    assert is_tls_url("rediss://h") and is_tls_url("AMQPS://h")
    assert not is_tls_url("redis://h") and not is_tls_url("amqp://h")


def test_management_follows_the_amqp_scheme(monkeypatch):
    monkeypatch.delenv("EBBTIDE_RABBITMQ_MANAGEMENT_URL", raising=False)
    assert parse_options("amqps://u:p@h/v").management_url == "https://u:p@h:15671"
    assert parse_options("amqps://u:p@h/v?management_port=9443").management_url == (
        "https://u:p@h:9443"
    )
    assert parse_options("amqp://u:p@h/v").management_url == "http://u:p@h:15672"
